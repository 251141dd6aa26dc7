"""The ParallelEnv: PettingZoo API, determinism, accounting, a hand-computed step, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test
from pettingzoo.test.state_test import state_test
from pettingzoo.utils.conversions import parallel_to_aec

import mmgrid_env
from mmgrid_env import (AGENT_INFO_KEYS, SYSTEM_INFO_KEYS, ConfigError, EnvConfig, MicrogridConfig, env,
                        parallel_env, presets)


def random_episode(e, seed, scale=1.0):
    """Run one episode with seeded random actions in [-scale, scale]; return the per-step records."""
    rng = np.random.default_rng(seed)
    obs, infos = e.reset(seed=seed)
    steps = [(obs, None, infos)]
    while e.agents:
        actions = {a: rng.uniform(-scale, scale, 4).astype(np.float32) for a in e.agents}
        obs, rew, term, trunc, infos = e.step(actions)
        steps.append((obs, rew, infos))
    return steps


# ---------------------------------------------------------------------------------------------- PettingZoo API
def test_parallel_api():
    parallel_api_test(parallel_env(), num_cycles=30)


def test_parallel_seed():
    parallel_seed_test(lambda: parallel_env(), num_cycles=30)


@pytest.mark.parametrize("extras", [False, True])
def test_aec_api_catches_dtype_and_bounds(extras):
    kwargs = dict(obs_hour=True, obs_q_load=True, obs_price_forecast=True) if extras else {}
    api_test(parallel_to_aec(parallel_env(**kwargs)), num_cycles=30)
    api_test(env(**kwargs), num_cycles=10)


def test_state():
    state_test(env(), parallel_env(), num_cycles=10)
    e = parallel_env("paper_extras")
    e.reset(seed=0)
    s = e.state()
    assert s.dtype == np.float32 and e.state_space.contains(s)
    # 4 agents × 6 core features (+ forecast) + hour sin/cos once
    assert s.shape == (4 * 6 + 2,) == e.state_space.shape


def test_day_ahead_price_forecast_columns():
    """obs_price_forecast=k appends the prices of hours t+1..t+k (crossing midnight into the next day's data)."""
    k = 11
    e = parallel_env("paper_day_ahead")
    assert e.config.obs_price_forecast == k and e.config.obs_hour
    assert e.observation_space("mg_0").shape == (5 + k + 2,)
    day = 10
    obs, _ = e.reset(seed=0, options={"day": day})
    price = e.dataset.price_eur_per_kwh.reshape(-1) / e.config.price_scale_eur_per_kwh
    for hour in range(24):
        t = day * 24 + hour
        for a in e.possible_agents:
            np.testing.assert_allclose(obs[a][3], price[t], rtol=1e-6)
            np.testing.assert_allclose(obs[a][5:5 + k], price[t + 1:t + 1 + k], rtol=1e-6, atol=1e-7)
            assert e.observation_space(a).contains(obs[a])
        obs, *_ = e.step({a: np.zeros(4, np.float32) for a in e.agents})
    # True still means the next hour only (the "paper_extras" preset keeps its meaning)
    assert parallel_env("paper_extras").observation_space("mg_0").shape == (5 + 1 + 2,)
    # the last day of the data: the forecast repeats the last price instead of reading past the end
    last = e.dataset.n_days - 1
    obs, _ = e.reset(options={"day": last})
    for _ in range(23):
        obs, *_ = e.step({a: np.zeros(4, np.float32) for a in e.agents})
    np.testing.assert_allclose(obs["mg_0"][5:5 + k], price[-1], rtol=1e-6)
    with pytest.raises(ConfigError, match="obs_price_forecast"):
        parallel_env(obs_price_forecast=30)
    with pytest.raises(ConfigError, match="obs_price_forecast"):
        parallel_env(obs_price_forecast=2.5)


def test_spaces_cached_and_metadata():
    e = parallel_env()
    for a in e.possible_agents:
        assert e.observation_space(a) is e.observation_space(a)
        assert e.action_space(a) is e.action_space(a)
        assert e.action_space(a).dtype == np.float32 and e.observation_space(a).dtype == np.float32
        assert np.all(np.isfinite(e.observation_space(a).low)) and np.all(np.isfinite(e.observation_space(a).high))
    assert e.metadata["name"] == "mmgrid_v1" and e.metadata["is_parallelizable"]
    assert e.possible_agents == ["mg_0", "mg_1", "mg_2", "mg_3"]
    assert hasattr(e, "render_mode") and e.render() is None


def test_episode_is_one_day_ending_by_truncation():
    e = parallel_env()
    obs, infos = e.reset(seed=3)
    n = 0
    while e.agents:
        obs, rew, term, trunc, infos = e.step({a: e.action_space(a).sample() for a in e.agents})
        n += 1
        assert not any(term.values())
        assert all(trunc.values()) == (n == 24) and any(trunc.values()) == (n == 24)
        for a, o in obs.items():
            assert e.observation_space(a).contains(o)
    assert n == 24 and e.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        e.step({a: np.zeros(4) for a in e.possible_agents})


def test_info_keys_are_numeric_and_stable():
    e = parallel_env()
    steps = random_episode(e, seed=1)
    keys = set(AGENT_INFO_KEYS) | set(SYSTEM_INFO_KEYS)
    for _, _, infos in steps:
        assert set(infos) == set(e.possible_agents)
        for info in infos.values():
            assert set(info) == keys
            assert all(isinstance(v, float) and math.isfinite(v) for v in info.values())


# ---------------------------------------------------------------------------------------------- reset options
def test_reset_day_and_split():
    e = parallel_env()
    ds = e.dataset
    assert ds.n_days == 366 and len(ds.train_days) == 256 and len(ds.validation_days) == 37
    assert len(ds.test_days) == 73 and all(d % 5 == 4 for d in ds.test_days)
    parts = [set(ds.train_days.tolist()), set(ds.validation_days.tolist()), set(ds.test_days.tolist())]
    assert set.union(*parts) == set(range(366)) and sum(map(len, parts)) == 366  # disjoint, complete
    months = {int(ds.days[d][5:7]) for d in ds.validation_days}
    assert months == set(range(1, 13))  # validation days in every month
    for seed in range(20):
        e.reset(seed=seed, options={"split": "test"})
        assert e.day % 5 == 4
        e.reset(seed=seed)
        assert e.day % 5 != 4
    obs, infos = e.reset(options={"day": 10})
    assert e.day == 10 and infos["mg_0"]["day"] == 10.0
    # the observation is the first hour of that day, scaled by each microgrid's capacities
    mg = e.config.microgrids[0]
    assert obs["mg_0"][0] == pytest.approx(ds.pv_pu[10, 0], abs=1e-6)
    assert infos["mg_0"]["p_load_kw"] == pytest.approx(mg.load_peak_kw * ds.load_pu[10, 0])
    assert obs["mg_0"][3] == pytest.approx(ds.price_eur_per_kwh[10, 0] / 0.1, rel=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        e.reset(options={"day": 366})
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        e.reset(options={"split": "valid"})
    # a pinned day must belong to the split it is asked for: a test evaluation never runs a train day
    with pytest.raises(ValueError, match="not a 'test' day"):
        e.reset(options={"split": "test", "day": 0})
    e.reset(options={"split": "test", "day": 4})
    assert e.day == 4
    for seed in range(10):
        e.reset(seed=seed, options={"split": "validation"})
        assert e.day % 10 == 1


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_numbers():
    a = random_episode(parallel_env(), seed=7)
    b = random_episode(parallel_env(), seed=7)
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b):
        assert all(np.array_equal(oa[k], ob[k]) for k in oa)
        assert ra == rb
        assert ia == ib
    c = random_episode(parallel_env(), seed=8)
    assert any(ia != ic for (_, _, ia), (_, _, ic) in zip(a, c))


# ---------------------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("mode", ["shared", "individual"])
def test_energy_and_money_accounting(mode):
    e = parallel_env(reward_mode=mode, alpha=1.0, beta=0.0)
    f = e.config.microgrids
    n_steps = 0
    for seed in range(4):
        steps = random_episode(e, seed=seed, scale=1.3)  # beyond [-1, 1]: clipping is exercised too
        for _, rew, infos in steps[1:]:
            n_steps += 1
            inj = 0.0
            for i, a in enumerate(e.possible_agents):
                d = infos[a]
                # eq. 9: the lower layer's net injection
                p_net = d["p_pv_kw"] + d["p_wt_kw"] + d["p_mt_kw"] + d["p_ess_kw"] + d["p_grid_kw"] - d["p_load_kw"]
                assert p_net == pytest.approx(d["p_net_kw"], abs=1e-9)
                assert d["q_net_kvar"] == pytest.approx(d["q_grid_kvar"] - d["q_load_kvar"], abs=1e-9)
                inj += d["p_net_kw"] + d["delta_p_kw"] - d["curtailment_kw"] + d["shedding_kw"] - d["spill_kw"]
                assert 0 <= d["soc"] <= 1
                assert d["curtailment_kw"] <= d["p_pv_kw"] + d["p_wt_kw"] + 1e-6  # generation only
                assert d["spill_kw"] <= max(d["p_net_kw"], 0) + 1e-6
                assert d["shedding_kw"] <= max(-d["p_net_kw"], 0) + 1e-6
                # trades stay within limits
                assert f[i].grid_p_min_kw - 1e-6 <= d["p_grid_kw"] + d["delta_p_kw"] <= f[i].grid_p_max_kw + 1e-6
            # the network's balance: what the microgrids inject is what the lines lose
            assert inj == pytest.approx(infos["mg_0"]["loss_kw"], abs=1e-6)
            team = infos["mg_0"]["team_reward"]
            assert sum(rew.values()) == pytest.approx(team, abs=1e-9)
            assert team == pytest.approx(-infos["mg_0"]["cost_total_eur"], abs=1e-9)  # α = 1, β = 0
            lower = sum(infos[a]["cost_lower_eur"] for a in e.possible_agents)
            assert infos["mg_0"]["cost_total_eur"] == pytest.approx(lower + infos["mg_0"]["cost_upper_eur"])
    assert n_steps == 96


def test_individual_rewards_differ_but_sum_to_team():
    e = parallel_env(reward_mode="individual")
    steps = random_episode(e, seed=2)
    _, rew, infos = steps[5]
    assert len(set(rew.values())) > 1
    assert sum(rew.values()) == pytest.approx(infos["mg_0"]["team_reward"], abs=1e-9)
    es = parallel_env(reward_mode="shared")
    _, rew_s, _ = random_episode(es, seed=2)[5]
    assert len(set(rew_s.values())) == 1
    assert sum(rew_s.values()) == pytest.approx(sum(rew.values()), abs=1e-9)


def test_soc_follows_ess_equation_and_clips_at_physical_limits():
    e = parallel_env()
    f = e.config.microgrids
    e.reset(seed=0, options={"day": 0, "soc": [0.02, 0.5, 0.98, 0.5]})
    soc = np.array([0.02, 0.5, 0.98, 0.5])
    # full discharge for mg_0 (almost empty), full charge for mg_2 (almost full)
    act = {a: np.zeros(4, np.float32) for a in e.agents}
    act["mg_0"][1] = 1.0
    act["mg_2"][1] = -1.0
    for _ in range(3):
        _, _, _, _, infos = e.step(act)
        for i, a in enumerate(e.possible_agents):
            d, mg = infos[a], f[i]
            expected = soc[i] + (mg.ess_eta_charge * d["p_charge_kw"] - d["p_discharge_kw"] / mg.ess_eta_discharge) \
                / mg.ess_capacity_kwh
            assert d["soc"] == pytest.approx(expected, abs=1e-12)
            assert 0.0 <= d["soc"] <= 1.0
            assert d["p_ess_kw"] == pytest.approx(d["p_discharge_kw"] - d["p_charge_kw"])
            soc[i] = d["soc"]
    assert infos["mg_0"]["soc"] == 0.0 and infos["mg_0"]["p_ess_clipped_kw"] == pytest.approx(125.0)
    assert infos["mg_2"]["soc"] == pytest.approx(1.0) and infos["mg_2"]["p_ess_clipped_kw"] == pytest.approx(-100.0)
    assert infos["mg_0"]["soc_violation"] == pytest.approx(0.1)  # cons(SoC) = soc_min - 0


def test_hand_computed_step():
    """One microgrid's step worked out by hand, with the OPF's balancing trade checked against π⁺."""
    e = parallel_env(reward_mode="individual", beta=50.0)
    e.reset(options={"day": 0})
    ds, mg = e.dataset, e.config.microgrids[2]  # mg_2: bus 5, load-heavy
    # a = [0, 0.5, -0.5, 0]: P_MT mid-range, discharge 50 % of the way to max, sell 150 kW (range ±400)
    act = {a: np.zeros(4, np.float32) for a in e.agents}
    act["mg_2"] = np.array([0.0, 0.5, -0.5, 0.0], np.float32)
    _, rew, _, _, infos = e.step(act)
    d = infos["mg_2"]
    c = ds.price_eur_per_kwh[0, 0]
    pv, wt, load = 100 * ds.pv_pu[0, 0], 50 * ds.wind_pu[0, 0], 450 * ds.load_pu[0, 0]
    p_mt = 100.0  # 0 + (0 + 1)/2 · 200
    p_ess = -100 + 0.75 * 200  # = 50 kW discharge
    p_grid = -400 + 0.25 * 800  # = -200 kW (selling)
    assert (d["p_mt_kw"], d["p_ess_kw"], d["p_grid_kw"]) == pytest.approx((p_mt, p_ess, p_grid))
    assert d["q_load_kvar"] == pytest.approx(load * math.tan(math.acos(0.95)))
    p_net = pv + wt + p_mt + p_ess + p_grid - load
    assert d["p_net_kw"] == pytest.approx(p_net)
    f_mg = c * p_grid
    f_mt = 1e-4 * p_mt ** 2 + 0.08 * p_mt + 1.5
    f_ess = 0.005 * p_ess / 0.95
    soc = 0.5 - p_ess / 0.95 / 400
    assert d["soc"] == pytest.approx(soc)
    assert (d["cost_grid_eur"], d["cost_mt_eur"], d["cost_ess_eur"]) == pytest.approx((f_mg, f_mt, f_ess))
    assert d["reward_lower"] == pytest.approx(-(f_mg + f_mt + f_ess))  # SoC inside limits: no penalty
    # this microgrid is in deficit: the OPF buys at π⁺ = c + 0.2|c| (or routes a neighbour's surplus)
    assert p_net < 0 and c > 0
    pi_up, pi_dn = c + 0.2 * abs(c), c - 0.2 * abs(c)
    dp, dq = d["delta_p_kw"], d["delta_q_kvar"]
    c_q = 0.01 * abs(c) + 1e-4
    expected = pi_up * max(dp, 0) - pi_dn * max(-dp, 0) + c_q * abs(dq)
    assert d["cost_balancing_eur"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # individual reward: own lower-layer reward − own balancing cost − |p|-share of losses
    shares = np.array([abs(infos[a]["p_net_kw"]) for a in e.possible_agents])
    loss_share = infos["mg_0"]["loss_cost_eur"] * shares[2] / shares.sum()
    assert rew["mg_2"] == pytest.approx(d["reward_lower"] - d["cost_balancing_eur"] - loss_share, abs=1e-9)
    assert mg.bus == 5


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_actions():
    e = parallel_env()
    e.reset(seed=0)
    good = {a: np.zeros(4, np.float32) for a in e.agents}
    with pytest.raises(ValueError, match="shape"):
        e.step({**good, "mg_1": np.zeros(3)})
    with pytest.raises(ValueError, match=r"mg_2.*NaN or inf"):
        e.step({**good, "mg_2": np.array([0, np.nan, 0, 0])})
    with pytest.raises(ValueError, match="NaN or inf"):
        e.step({**good, "mg_0": np.array([0, 0, np.inf, 0])})
    with pytest.raises(ValueError, match="missing.*mg_3"):
        e.step({a: v for a, v in good.items() if a != "mg_3"})
    with pytest.raises(ValueError, match="unknown.*mg_9"):
        e.step({**good, "mg_9": np.zeros(4)})
    with pytest.raises(TypeError, match="dict"):
        e.step([np.zeros(4)] * 4)
    # finite out-of-range values are clipped and counted
    _, _, _, _, infos = e.step({**good, "mg_1": np.array([5.0, -3.0, 0.5, 0.0])})
    assert infos["mg_1"]["actions_clipped"] == 2.0 and infos["mg_0"]["actions_clipped"] == 0.0
    assert infos["mg_1"]["p_mt_kw"] == pytest.approx(e.config.microgrids[1].mt_max_kw)


@pytest.mark.parametrize("overrides, match", [
    (dict(microgrid_buses=[1, 2, 5, 99]), "unknown bus 99"),
    (dict(microgrid_buses=[1, 2, 2, 24]), "duplicate"),
    (dict(microgrid_buses=[1, 2, 5]), "4 microgrids"),
    (dict(reward_mode="selfish"), "reward_mode"),
    (dict(opf={"impedance_aggregation": "max"}), "impedance_aggregation"),
    (dict(opf={"v_min": 0.9}), "unknown opf field"),
    (dict(gamma=0.9), "unknown config field"),
])
def test_bad_config(overrides, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        parallel_env(**overrides)


@pytest.mark.parametrize("field, value, match", [
    ("ess_capacity_kwh", 0.0, r"ess_capacity_kwh must be > 0.0 \(a positive capacity\)"),
    ("load_peak_kw", -5.0, "load_peak_kw must be > 0"),
    ("pv_kwp", -1.0, "pv_kwp must be >= 0"),
    ("mt_cost_b_eur_per_kwh", float("nan"), "mt_cost_b_eur_per_kwh must be finite"),
    ("grid_p_max_kw", float("inf"), "grid_p_max_kw must be finite"),
    ("grid_q_min_kvar", -float("inf"), "grid_q_min_kvar must be finite"),
    ("bus", 2.7, "bus must be an integer"),
    ("wt_kw", "100", "wt_kw must be a number"),
    ("soc_min", 0.95, "SoC bounds out of order"),
    ("ess_eta_charge", 1.5, "ess_eta_charge"),
    ("grid_p_min_kw", 1000.0, "grid_p_min_kw"),
])
def test_bad_microgrid_values(field, value, match):
    import dataclasses

    mgs = list(presets["paper"].microgrids)
    mgs[1] = dataclasses.replace(mgs[1], **{field: value})
    with pytest.raises(ConfigError, match=rf"microgrids\[1\].*{match}|{match}"):
        parallel_env(microgrids=mgs)


def test_custom_microgrids_and_placement():
    mgs = (MicrogridConfig(bus=17, pv_kwp=300, wt_kw=0, load_peak_kw=200),
           MicrogridConfig(bus=32, pv_kwp=0, wt_kw=300, load_peak_kw=250),
           MicrogridConfig(bus=21, pv_kwp=100, wt_kw=100, load_peak_kw=150))
    e = parallel_env(EnvConfig(microgrids=mgs), opf={"impedance_aggregation": "sum"})
    assert e.possible_agents == ["mg_0", "mg_1", "mg_2"]
    assert set(e.network.buses) == {1, 5, 17, 21, 32}  # branching buses 1 and 5 added
    steps = random_episode(e, seed=0)
    assert len(steps) == 25
    assert max(s[2]["mg_0"]["relaxation_gap_pu"] for s in steps) < 1e-6
    assert mmgrid_env.__version__


def test_render_ansi():
    e = parallel_env(render_mode="ansi")
    e.reset(seed=0)
    e.step({a: np.zeros(4, np.float32) for a in e.agents})
    text = e.render()
    assert "mg_3" in text and "€" in text
    with pytest.raises(ValueError, match="render_mode"):
        parallel_env(render_mode="rgb")
