"""Ray RLlib smoke test of ``examples/rllib_ppo.py``: one PPO training iteration, shared policy, ``ray.init(num_cpus=2)``.

- the documented command, ``python examples/rllib_ppo.py --iterations 1`` (1 env runner; smaller batch), with its
  greedy evaluation and checkpoint;
- in-process, with the example's own parser, env creator and config: 2 env runners, one ``algo.train()``, checks of
  the sampled steps per agent and per module, the learner stats of the policy ``"shared"`` and changed weights;
  then a checkpoint is saved, its RLModule restored and its greedy actions compared.

RLlib tier: skipped unless ``ray.rllib`` is importable; ``.ci/rllib.sh`` runs it with the exact pins of
``requirements/rllib.txt`` (ray 2.60.0 pins gymnasium 1.2.2, so it has a venv of its own).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.rllib")
torch = pytest.importorskip("torch")

import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
from ray.tune.registry import register_env  # noqa: E402

AGENTS = ["mg_0", "mg_1", "mg_2", "mg_3"]
HOURS = 24  # one episode = one day
RUNNERS = 2
BATCH = RUNNERS * HOURS * 5  # env steps per iteration: 5 whole days per env runner
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rllib_ppo.py"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def load_example():
    spec = importlib.util.spec_from_file_location("mmgrid_rllib_ppo_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    # The env creator and the mapping function travel to the env-runner processes, which cannot import this file by
    # name: pickle them by value.
    ray.cloudpickle.register_pickle_by_value(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return load_example()


def finite(x) -> bool:
    return math.isfinite(float(x))


def test_env_creator_agents(example):
    """The example's env creator: RLlib's ParallelPettingZooEnv over mmgrid-env, agents mg_0 … mg_3, one day."""
    env = example.env_creator({"preset": "paper", "reward_mode": "shared"})
    try:
        assert sorted(env.possible_agents) == AGENTS
        assert all(example.policy_mapping_fn(a) == example.POLICY == "shared" for a in AGENTS)
        obs, _ = env.reset(seed=0)
        assert sorted(obs) == AGENTS and all(env.observation_space[a].contains(obs[a]) for a in AGENTS)
        for hour in range(HOURS):
            obs, rew, term, trunc, _ = env.step({a: env.action_space[a].sample() for a in AGENTS})
            assert sorted(rew) == AGENTS and all(finite(r) for r in rew.values())
            # A day ends by truncation (time limit), never termination: PPO bootstraps from the value of hour 24.
            assert term["__all__"] is False and trunc["__all__"] is (hour == HOURS - 1)
    finally:
        env.close()


def test_cli_one_iteration(tmp_path):
    """The documented smoke command (smaller batch): one iteration, the greedy evaluation and the checkpoint."""
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, str(EXAMPLE), "--iterations", "1", "--batch-size", str(HOURS * 10),
           "--minibatch-size", "120", "--epochs", "1", "--eval-days", "1", "--checkpoint", str(ckpt)]
    # Ray starts many processes: 240 s ran out on a 2-core machine with two training jobs on it
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    it, ev = lines
    assert it["iteration"] == 1
    assert it["env_steps_sampled_lifetime"] >= HOURS * 10
    assert sorted(it["agent_steps_sampled_lifetime"]) == AGENTS
    assert it["episodes_lifetime"] >= 10 and finite(it["episode_return_mean"])
    assert ev["eval_test_days"] == 1 and finite(ev["mean_daily_cost_eur"])
    assert "checkpoint:" in proc.stdout and (ckpt / "learner_group").is_dir()


@pytest.fixture(scope="module")
def trained(example):
    """(args, algo, initial weights of "shared", result of one algo.train()), 2 env runners, ray.init(num_cpus=2)."""
    args = example.build_parser().parse_args(
        ["--num-env-runners", str(RUNNERS), "--batch-size", str(BATCH), "--minibatch-size", "120",
         "--epochs", "2", "--seed", "0"])
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    algo = None
    try:
        register_env(example.ENV_NAME, example.env_creator)
        algo = example.build_config(args).build_algo()
        initial = {k: v.detach().clone() for k, v in algo.get_module(example.POLICY).state_dict().items()}
        result = algo.train()
        yield args, algo, initial, result
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()


def test_one_iteration_sampling(trained):
    _, _, _, result = trained
    runners = result["env_runners"]
    env_steps = float(runners["num_env_steps_sampled_lifetime"])
    assert env_steps >= BATCH
    # Every agent acts every hour, and all of them map to the one module "shared".
    per_agent = runners["num_agent_steps_sampled_lifetime"]
    assert sorted(per_agent) == AGENTS and all(float(n) == env_steps for n in per_agent.values())
    assert {k: float(v) for k, v in runners["num_module_steps_sampled_lifetime"].items()} == {
        "shared": len(AGENTS) * env_steps}
    # Whole days only (each runner samples a multiple of 24 steps); returns finite.
    assert float(runners["num_episodes_lifetime"]) >= BATCH // HOURS
    assert float(runners["episode_len_min"]) == float(runners["episode_len_max"]) == HOURS
    assert finite(runners["episode_return_mean"])
    agent_returns = runners["agent_episode_returns_mean"]
    assert sorted(agent_returns) == AGENTS and all(finite(r) for r in agent_returns.values())
    # episode_return_mean is the sum over the agents (with reward_mode="shared" every agent gets the same reward).
    assert float(runners["episode_return_mean"]) == pytest.approx(sum(map(float, agent_returns.values())), rel=1e-6)
    assert sorted(runners["module_episode_returns_mean"]) == ["shared"]


def test_one_iteration_learner(example, trained):
    _, algo, initial, result = trained
    learners = result["learners"]
    assert set(learners) == {"__all_modules__", "shared"}
    stats = learners["shared"]
    for key in ("total_loss", "policy_loss", "vf_loss", "entropy", "mean_kl_loss"):
        assert finite(stats[key]), (key, stats[key])
    assert float(stats["num_module_steps_trained"]) >= len(AGENTS) * BATCH
    assert float(stats["num_trainable_parameters"]) > 0
    trained_weights = algo.get_module(example.POLICY).state_dict()
    assert set(trained_weights) == set(initial)
    assert any(not torch.equal(initial[k], v) for k, v in trained_weights.items()), "no weight changed"


def test_checkpoint_restore(example, trained, tmp_path):
    """Save the algorithm; the RLModule restored from the checkpoint acts like the trained one."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from mmgrid_env import parallel_env

    args, algo, _, _ = trained
    path = Path(algo.save_to_path(str(tmp_path / "ckpt")))
    restored = RLModule.from_checkpoint(path / "learner_group" / "learner" / "rl_module" / example.POLICY)
    module = algo.get_module(example.POLICY)
    env = parallel_env(args.preset, reward_mode=args.reward_mode)
    obs, _ = env.reset(seed=1)
    for _ in range(3):
        a, b = example.greedy_actions(module, obs), example.greedy_actions(restored, obs)
        assert sorted(a) == AGENTS
        for agent in AGENTS:
            assert env.action_space(agent).contains(a[agent])
            np.testing.assert_allclose(a[agent], b[agent], rtol=1e-6, atol=1e-6)
        obs, *_ = env.step(a)
