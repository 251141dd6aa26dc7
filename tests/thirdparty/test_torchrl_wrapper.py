"""TorchRL's ``PettingZooWrapper``: specs, rollouts across a reset, serial and in a 2-worker ``ParallelEnv``.

Third-party tier: skipped unless ``torchrl`` is importable; ``.ci/thirdparty.sh`` runs it with the exact versions
of ``requirements/thirdparty.txt``.
"""

from __future__ import annotations

import numpy as np
import pytest

torchrl = pytest.importorskip("torchrl")
torch = pytest.importorskip("torch")

from torchrl.envs import ParallelEnv, PettingZooWrapper, SerialEnv  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from mmgrid_env import parallel_env  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:PettingZoo in TorchRL is tested using version:UserWarning")

N_AGENTS, HOURS, OBS = 4, 24, 5
STEPS = 30  # crosses the end of the first day (24 steps) and the automatic reset


def make_env():
    """Module level, so that ParallelEnv's worker processes can unpickle it."""
    return PettingZooWrapper(env=parallel_env(), return_state=True)


def check_rollout(td, batch=()):
    """Shapes, finite values, and 'done' exactly after hour 24 of each day."""
    b = tuple(batch)
    assert td.batch_size == torch.Size(b + (STEPS,))
    assert td["mg", "observation"].shape == b + (STEPS, N_AGENTS, OBS)
    assert td["mg", "action"].shape == b + (STEPS, N_AGENTS, 4)
    assert td["state"].shape == b + (STEPS, N_AGENTS * OBS)
    rew = td["next", "mg", "reward"]
    assert rew.shape == b + (STEPS, N_AGENTS, 1) and torch.isfinite(rew).all()
    done = td["next", "done"].reshape(b + (STEPS,))
    expected = torch.zeros(STEPS, dtype=torch.bool)
    expected[HOURS - 1] = True
    assert torch.equal(done, expected.expand(b + (STEPS,)))
    # truncated, never terminated
    assert not td["next", "terminated"].any() and td["next", "truncated"].any()
    # shared reward = team_reward / N for every agent; infos come through as float32 tensors
    info = td["next", "mg", "info"]
    torch.testing.assert_close(rew.squeeze(-1), info["team_reward"] / N_AGENTS, rtol=1e-4, atol=1e-3)
    hours = info["hour"][..., 0]
    assert torch.equal(hours[..., :HOURS], torch.arange(HOURS, dtype=hours.dtype).expand(b + (HOURS,)))
    assert torch.equal(hours[..., HOURS:], torch.arange(STEPS - HOURS, dtype=hours.dtype).expand(b + (STEPS - HOURS,)))


def test_specs_and_rollout_across_reset():
    env = make_env()
    try:
        assert env.group_map == {"mg": [f"mg_{i}" for i in range(N_AGENTS)]}
        check_env_specs(env, seed=0)
        env.set_seed(0)
        td = env.rollout(STEPS, break_when_any_done=False)
        check_rollout(td)
        # observation in the tensordict == what the PettingZoo env itself reports for the same seed
        # (TorchRL's set_seed(s) calls reset(seed=s) once; the next reset() draws the next day from that RNG)
        ref = parallel_env()
        ref.reset(seed=0)
        obs, _ = ref.reset()
        env.set_seed(0)
        first = env.reset()
        np.testing.assert_array_equal(first["mg", "observation"].numpy(),
                                      np.stack([obs[a] for a in ref.possible_agents]))
        np.testing.assert_array_equal(first["state"].numpy(), ref.state())
    finally:
        env.close()


def test_serial_env():
    env = SerialEnv(2, make_env)
    try:
        env.set_seed(0)
        td = env.rollout(STEPS, break_when_any_done=False)
        check_rollout(td, (2,))
    finally:
        env.close()


def test_parallel_env_two_workers():
    env = ParallelEnv(2, make_env)
    try:
        check_env_specs(env, seed=0)
        env.set_seed(0)
        td = env.rollout(STEPS, break_when_any_done=False)
        check_rollout(td, (2,))
        # workers are seeded differently: different days, different observations
        assert not torch.equal(td[0]["mg", "observation"], td[1]["mg", "observation"])
    finally:
        env.close()
