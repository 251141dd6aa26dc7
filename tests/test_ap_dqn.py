"""Tests of baselines/ap_dqn.py: sum-tree, prioritized replay, IS weights, β schedule, attention, --quick run."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmgrid_baselines.ap_dqn import (Args, FeatureAttention, PrioritizedReplayBuffer, QNetwork, SumTree, beta_schedule,
                              importance_weights, load_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sumtree_total_and_updates():
    t = SumTree(10)
    assert t.capacity == 16
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 5, 10)
    t.update(np.arange(10), p)
    assert t.total == pytest.approx(p.sum())
    t.update([3, 7], [0.0, 11.0])
    p[3], p[7] = 0.0, 11.0
    assert t.total == pytest.approx(p.sum())
    for _ in range(50):  # random updates keep the total = sum of the leaves
        i = rng.integers(0, 10, 4)
        v = rng.uniform(0, 3, 4)
        t.update(i, v)
        for j, x in zip(i, v):
            p[j] = x
        assert t.total == pytest.approx(p.sum())
        np.testing.assert_allclose(t.get(np.arange(10)), p)
    with pytest.raises(ValueError):
        t.update([0], [-1.0])


def test_sumtree_find_prefix():
    t = SumTree(4)
    t.update(np.arange(4), [1.0, 0.0, 2.0, 3.0])
    np.testing.assert_array_equal(t.find([0.0, 0.999, 1.0, 2.5, 3.0, 5.999]), [0, 0, 2, 2, 3, 3])


def test_sumtree_sampling_frequencies_match_priorities():
    rng = np.random.default_rng(123)
    p = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 10.0, 0.5])
    t = SumTree(len(p))
    t.update(np.arange(len(p)), p)
    n = 200_000
    idx = t.find(rng.uniform(0, t.total, n))
    freq = np.bincount(idx, minlength=t.capacity)[: len(p)] / n
    expected = p / p.sum()
    assert freq[4] == 0
    # chi-square: 6 dof, 99.9 % quantile ≈ 22.5
    mask = expected > 0
    chi2 = n * np.sum((freq[mask] - expected[mask]) ** 2 / expected[mask])
    assert chi2 < 22.5, (freq, expected)


def test_per_buffer_stratified_sampling_and_max_priority():
    rng = np.random.default_rng(7)
    buf = PrioritizedReplayBuffer(8, 2, alpha=0.6, eps=1e-3)
    z = np.zeros((4, 2), np.float32)
    buf.add(z, np.arange(4), np.arange(4), np.zeros(4), z, np.zeros(4))
    np.testing.assert_allclose(buf.tree.get(np.arange(4)), 1.0)  # max priority 1 at start
    buf.update_priorities([0, 1, 2, 3], [0.0, 1.0, 3.0, 0.5])
    assert buf.max_priority == pytest.approx(3.001)
    buf.add(z[:1], [0], [0], [0.0], z[:1], [0.0])  # new transition at max priority
    assert buf.tree.get(4) == pytest.approx(3.001 ** 0.6)
    pri = buf.tree.get(np.arange(5))
    counts = np.zeros(5)
    for _ in range(4000):
        idx, w, _ = buf.sample(16, rng, beta=0.4)
        counts += np.bincount(idx, minlength=5)
        assert w.max() == pytest.approx(1.0) and np.all(w > 0)
    np.testing.assert_allclose(counts / counts.sum(), pri / pri.sum(), atol=0.01)


def test_importance_weights_hand_computed():
    probs = np.array([0.5, 0.25, 0.125])
    n, beta = 4, 0.5
    raw = np.array([(4 * 0.5) ** -0.5, (4 * 0.25) ** -0.5, (4 * 0.125) ** -0.5])  # 0.7071, 1, 1.4142
    np.testing.assert_allclose(importance_weights(probs, n, beta), raw / raw.max())
    np.testing.assert_allclose(importance_weights(probs, n, beta), [0.5, 1 / np.sqrt(2), 1.0])
    np.testing.assert_allclose(importance_weights(probs, n, 0.0), [1.0, 1.0, 1.0])


def test_per_sample_weights_match_formula():
    rng = np.random.default_rng(0)
    buf = PrioritizedReplayBuffer(4, 1, alpha=1.0, eps=0.0)
    z = np.zeros((4, 1), np.float32)
    buf.add(z, np.zeros(4), np.zeros(4), np.zeros(4), z, np.zeros(4))
    buf.update_priorities(np.arange(4), [1.0, 2.0, 3.0, 4.0])  # P = p/10 (α = 1)
    idx, w, _ = buf.sample(4, rng, beta=1.0)
    raw = (4 * np.array([1.0, 2.0, 3.0, 4.0])[idx] / 10.0) ** -1.0
    np.testing.assert_allclose(w, raw / raw.max())


def test_beta_schedule():
    assert beta_schedule(0, 1000, 0.4) == pytest.approx(0.4)
    assert beta_schedule(250, 1000, 0.4) == pytest.approx(0.55)
    assert beta_schedule(500, 1000, 0.4) == pytest.approx(0.7)
    assert beta_schedule(1000, 1000, 0.4) == pytest.approx(1.0)
    assert beta_schedule(5000, 1000, 0.4) == pytest.approx(1.0)


def test_attention_shapes_and_weights_sum_to_one():
    torch.manual_seed(0)
    att = FeatureAttention(n_features=6, d_model=32, n_heads=4)
    x = torch.rand(7, 6)
    pooled, w = att(x)
    assert pooled.shape == (7, 32)
    assert w.shape == (7, 4, 6, 6)
    torch.testing.assert_close(w.sum(dim=-1), torch.ones(7, 4, 6))
    assert torch.all(w >= 0)
    q = QNetwork(6, 4, 44, attention=True)
    assert q(x, torch.tensor([0, 1, 2, 3, 0, 1, 2])).shape == (7, 44)
    q2 = QNetwork(6, 4, 44, attention=False)
    assert q2(x, torch.zeros(7, dtype=torch.long)).shape == (7, 44)


def test_quick_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "examples", "train_ap_dqn.py"), "--quick", "--out", str(out),
           "--no-progress", "--eval-days", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "ap_dqn_s0"
    for name in ("log.csv", "model.pt", "learning_curve.png", "eval.csv", "eval.json"):
        assert (run / name).exists(), name
    table = (out / "comparison.md").read_text()
    assert table.count("| rule_based |") == 1 and table.count("| rule_based_day_ahead |") == 1
    qnet, args = load_checkpoint(run / "model.pt")
    # default action set: the 11 ESS levels, MT in merit order; the observation of "paper_day_ahead" (5 + 11
    # prices + sin/cos of the hour) + t/24
    assert isinstance(args, Args) and args.variant == "ap_dqn" and qnet.n_actions == 11 and qnet.n_features == 19
    assert args.soc_shield and args.reward_baseline == "net_load"
    assert len((run / "log.csv").read_text().strip().splitlines()) == 11  # header + 10 episodes


def test_net_load_reward_baseline_by_hand():
    """The exogenous baseline c·(P_load − P_PV − P_WT)·Δt: the agent's own in "individual" mode, the team's mean
    in "shared" mode; and training rejects an unknown baseline name."""
    from mmgrid_baselines.ap_dqn import net_load_cost, train

    infos = {"a": {"price_eur_per_kwh": 0.1, "p_load_kw": 200.0, "p_pv_kw": 50.0, "p_wt_kw": 30.0},
             "b": {"price_eur_per_kwh": 0.1, "p_load_kw": 100.0, "p_pv_kw": 150.0, "p_wt_kw": 0.0}}
    np.testing.assert_allclose(net_load_cost(infos, ["a", "b"], "individual"), [12.0, -5.0])
    np.testing.assert_allclose(net_load_cost(infos, ["a", "b"], "shared"), [3.5, 3.5])
    np.testing.assert_allclose(net_load_cost(infos, ["a", "b"], "individual", dt_h=0.5), [6.0, -2.5])
    with pytest.raises(ValueError, match="reward_baseline"):
        train(Args(reward_baseline="mean", total_steps=1), progress=False)


def test_same_seed_same_run():
    """AP-DQN (attention + PER) twice with one seed: identical weights and episode costs; another seed differs."""
    from mmgrid_baselines.ap_dqn import train

    args = Args(variant="ap_dqn", total_steps=240, learning_starts=48, batch_size=16, seed=3)
    r1, r2 = train(args, progress=False), train(args, progress=False)
    assert r1.updates > 100
    for k, v in r1.qnet.state_dict().items():
        torch.testing.assert_close(r2.qnet.state_dict()[k], v, rtol=0, atol=0)
    assert [row["cost_eur"] for row in r1.log] == [row["cost_eur"] for row in r2.log]
    r3 = train(Args(variant="ap_dqn", total_steps=240, learning_starts=48, batch_size=16, seed=4), progress=False)
    assert any(not torch.equal(r3.qnet.state_dict()[k], v) for k, v in r1.qnet.state_dict().items())


def test_no_wall_clock_cap_by_default():
    """By default a run's length is its step budget alone (not the machine's load); a cap, when set, stops it."""
    from mmgrid_baselines.ap_dqn import train

    assert Args().time_budget_s is None
    full = train(Args(variant="dqn", total_steps=48, learning_starts=24, batch_size=8), progress=False)
    assert full.env_steps == 48
    capped = train(Args(variant="dqn", total_steps=48, learning_starts=24, batch_size=8, time_budget_s=1e-9),
                   progress=False)
    assert capped.env_steps < 48
