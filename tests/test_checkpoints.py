"""Integrity checks of the MAPPO and AP-DQN checkpoints: a damaged file raises CheckpointError naming it.

Tiny untrained networks with perturbed weights; every test runs in well under a second.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmgrid_baselines import ap_dqn, mappo  # noqa: E402
from mmgrid_baselines.mappo import CheckpointError  # noqa: E402
from mmgrid_env import parallel_env  # noqa: E402


@pytest.fixture(scope="module")
def env():
    return parallel_env("paper_extras")


@dataclasses.dataclass
class Kind:
    """One checkpoint format: how to save the reference network, load a file and get its outputs."""

    name: str
    save: object  # path -> None
    load: object  # path -> network
    outputs: object  # network -> np.ndarray (actions or Q-values, for fixed inputs)
    reference: np.ndarray  # outputs of the network that was saved
    actor_weight: np.ndarray  # a tensor of the state dict, to find its bytes in the file


def _perturb(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # trained-looking weights: an untrained actor's outputs are all ~0
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


def _mappo_kind(env) -> Kind:
    args = mappo.Args(env_preset="paper_extras", hidden=16, action_stages=())
    agent = mappo.MAPPOAgent(env.observation_space("mg_0").shape[0], env.state_space.shape[0], 4, 4, args)
    _perturb(agent, 0)
    info = {"env_preset": "paper_extras", "reward_mode": "shared", "env_overrides": {},
            "agents": list(env.possible_agents), "obs_dim": agent.obs_dim, "state_dim": agent.state_dim,
            "act_dim": 4}
    obs, _ = env.reset(seed=0, options={"split": "test"})

    def outputs(a):
        act = mappo.MAPPOPolicy(a, env.possible_agents)(obs)
        return np.stack([act[k] for k in env.possible_agents])

    return Kind("mappo", lambda p: mappo.save_checkpoint(p, agent, args, info),
                lambda p: mappo.load_checkpoint(p)[0], outputs, outputs(agent),
                agent.actor.mean[0].weight.detach().numpy().copy())


def _ap_dqn_kind(env) -> Kind:
    args = ap_dqn.Args(config="paper_extras", hidden=16, d_model=8, n_heads=2)
    n_feat = ap_dqn.n_features(args, env.observation_space("mg_0").shape[0])
    q = ap_dqn.QNetwork(n_feat, 4, 11, args.attention, args.hidden, args.d_model, args.n_heads)
    _perturb(q, 1)
    x, ids = torch.rand(8, n_feat), torch.arange(8) % 4

    def outputs(net):
        with torch.no_grad():
            return net.eval()(x, ids).numpy()

    return Kind("ap_dqn", lambda p: ap_dqn.save_checkpoint(p, ap_dqn.TrainResult(q, args)),
                lambda p: ap_dqn.load_checkpoint(p)[0], outputs, outputs(q),
                q.mlp[0].weight.detach().numpy().copy())


@pytest.fixture(params=["mappo", "ap_dqn"])
def kind(request, env):
    return _mappo_kind(env) if request.param == "mappo" else _ap_dqn_kind(env)


@pytest.fixture
def saved(kind, tmp_path):
    path = tmp_path / f"{kind.name}.pt"
    kind.save(path)
    return path


def _raises_naming(kind, path, match):
    with pytest.raises(CheckpointError, match=match) as exc:
        kind.load(path)
    assert str(exc.value).startswith(f"{path}: "), exc.value
    assert "\n" not in str(exc.value)
    return exc.value


# ---------------------------------------------------------------------------------------------------- intact files
def test_intact_checkpoint_gives_the_saved_networks_outputs(kind, saved):
    np.testing.assert_array_equal(kind.outputs(kind.load(saved)), kind.reference)
    assert os.listdir(saved.parent) == [saved.name]  # the temporary file of the atomic save is gone
    assert zipfile.ZipFile(saved).testzip() is None
    assert len(torch.load(saved, weights_only=True)["state_dict_sha256"]) == 64


def test_checkpoint_without_hash_still_loads(kind, saved):
    """A checkpoint written before the hash existed loads (unchecked by it) and gives the same outputs."""
    payload = torch.load(saved, weights_only=True)
    del payload["state_dict_sha256"]
    torch.save(payload, saved)
    np.testing.assert_array_equal(kind.outputs(kind.load(saved)), kind.reference)


def test_save_writes_crc32s_even_when_torch_is_told_not_to(kind, tmp_path):
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch always writes CRC32s")
    torch.serialization.set_crc32_options(False)
    try:
        kind.save(tmp_path / "c.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    np.testing.assert_array_equal(kind.outputs(kind.load(tmp_path / "c.pt")), kind.reference)


# ---------------------------------------------------------------------------------------------------- damaged files
def test_empty_file(kind, saved):
    saved.write_bytes(b"")
    _raises_naming(kind, saved, "not a valid checkpoint")


def test_random_bytes(kind, saved):
    saved.write_bytes(np.random.default_rng(0).bytes(4096))
    _raises_naming(kind, saved, "not a valid checkpoint")


@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_truncated_file(kind, saved, keep):
    raw = saved.read_bytes()
    saved.write_bytes(raw[:int(keep * len(raw)) if keep < 1 else keep])
    _raises_naming(kind, saved, "not a valid checkpoint")


def test_flipped_bytes_in_the_weights_fail_the_crc(kind, saved):
    raw = bytearray(saved.read_bytes())
    at = raw.find(kind.actor_weight.tobytes())  # the tensor's bytes are stored as they are
    assert at > 0
    for i in (5, 6, 17):
        raw[at + i] ^= 0x5A
    saved.write_bytes(bytes(raw))
    torch.load(saved, weights_only=True)  # torch itself loads it: it does not check the CRCs
    _raises_naming(kind, saved, "fails its CRC")


def test_weights_changed_after_saving_fail_the_hash(kind, saved):
    """A well-formed file (valid CRCs) whose weights differ from those the stored SHA-256 was computed on."""
    payload = torch.load(saved, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3
    torch.save(payload, saved)
    _raises_naming(kind, saved, "SHA-256")


def test_other_files_are_not_checkpoints(kind, tmp_path):
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    _raises_naming(kind, plain_zip, "not a valid checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    _raises_naming(kind, tensor, "no state_dict")
    with pytest.raises(FileNotFoundError):  # a missing file is not a damaged one
        kind.load(tmp_path / "missing.pt")


def test_missing_fields_and_the_other_format(kind, saved, env, tmp_path):
    payload = torch.load(saved, weights_only=True)
    field = "env" if kind.name == "mappo" else "config"
    del payload[field]
    torch.save(payload, saved)
    _raises_naming(kind, saved, f"missing field '{field}'" if kind.name == "mappo" else "missing or unknown")
    other = _ap_dqn_kind(env) if kind.name == "mappo" else _mappo_kind(env)
    other.save(tmp_path / "other.pt")
    _raises_naming(kind, tmp_path / "other.pt", "not a MAPPO checkpoint|not a valid AP-DQN checkpoint")


def test_checkpoint_error_is_a_value_error_and_policy_from_checkpoint_raises_it(tmp_path):
    assert issubclass(CheckpointError, ValueError)  # callers that caught the old ValueError still do
    assert ap_dqn.CheckpointError is CheckpointError
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt: not a valid checkpoint"):
        mappo.policy_from_checkpoint(path)


# ---------------------------------------------------------------------------------------------------- load_policy
def test_load_policy_reads_either_learner_with_its_preset(kind, saved, env):
    """``mmgrid_baselines.load_policy`` tells the formats apart and returns a policy that acts as the saved network,
    with the preset it was trained on; a damaged file names itself and both formats."""
    from mmgrid_baselines import load_policy

    loaded = load_policy(saved)
    assert (loaded.learner, loaded.env_preset, loaded.env_overrides) == (kind.name, "paper_extras", {})
    assert loaded.seed == (mappo.Args().seed if kind.name == "mappo" else ap_dqn.Args().seed)
    assert loaded.hyperparameters["hidden"] == 16
    obs, _ = env.reset(seed=0, options={"split": "test"})
    act = loaded.policy(obs)
    assert set(act) == set(env.possible_agents)
    if kind.name == "mappo":  # the same actions as the saved network gives
        np.testing.assert_array_equal(np.stack([act[k] for k in env.possible_agents]), kind.reference)
    else:  # a discrete choice per agent, mapped to set-points inside the action box
        assert all(env.action_space(k).contains(np.asarray(act[k], np.float32)) for k in env.possible_agents)
    saved.write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither a MAPPO nor an AP-DQN checkpoint") as exc:
        load_policy(saved)
    assert str(exc.value).startswith(f"{saved}: ") and str(exc.value).count(str(saved)) == 1
