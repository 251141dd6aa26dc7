"""The public control layer (mmgrid_env.control): each function against the env itself or a hand computation, and
the three controllers (rule-based policy, DiscreteActions, the learners' ActionChain) sharing its rules."""

from __future__ import annotations

import numpy as np
import pytest

from mmgrid_env import DiscreteActions, RuleBasedPolicy, control, parallel_env


def test_observation_columns_name_what_the_env_observes():
    env = parallel_env("paper_day_ahead", obs_q_load=True)
    col = control.observation_columns(env)
    assert list(col)[:6] == ["pv", "wt", "load", "price", "soc", "q_load"]
    assert col["price_ahead_11"] == 16 and col["hour_cos"] == 18 == env.observation_space("mg_0").shape[0] - 1
    obs, infos = env.reset(seed=0, options={"day": 40})
    env.step({a: np.zeros(4, np.float32) for a in env.agents})
    obs, *_ = env.step({a: np.zeros(4, np.float32) for a in env.agents})
    seen = control.observe(env, obs)
    hour_infos = env.step({a: np.zeros(4, np.float32) for a in env.agents})[4]  # this hour's data, in infos
    for i, a in enumerate(env.possible_agents):
        d = hour_infos[a]
        assert seen.pv_kw[i] == pytest.approx(d["p_pv_kw"], abs=1e-3)
        assert seen.wt_kw[i] == pytest.approx(d["p_wt_kw"], abs=1e-3)
        assert seen.load_kw[i] == pytest.approx(d["p_load_kw"], abs=1e-3)
        assert seen.q_load_kvar[i] == pytest.approx(d["q_load_kvar"], abs=1e-3)
        assert seen.price_eur_per_kwh[i] == pytest.approx(d["price_eur_per_kwh"], abs=1e-6)
    price = env.dataset.price_eur_per_kwh[40]
    np.testing.assert_allclose(seen.price_ahead_eur_per_kwh[0], price[3:14], atol=1e-6)  # hours 3..13 after hour 2


def test_merit_order_set_point_by_hand():
    fleet = control.fleet_of("paper")  # a = 1e-4 €/kW²h; b = 0.085, 0.095, 0.08, 0.09 €/kWh
    p = control.merit_order_mt_kw(fleet, 0.1)
    np.testing.assert_allclose(p, [(0.1 - 0.085) / 2e-4, (0.1 - 0.095) / 2e-4, (0.1 - 0.08) / 2e-4, (0.1 - 0.09) / 2e-4])
    np.testing.assert_array_equal(control.merit_order_mt_kw(fleet, -0.05), fleet.mt_min_kw)
    import dataclasses

    linear = dataclasses.replace(fleet, mt_cost_a_eur_per_kw2h=np.zeros(4))  # a = 0: all or nothing at c = b
    np.testing.assert_array_equal(control.merit_order_mt_kw(linear, 0.09), [120.0, 0.0, 200.0, 0.0])


def test_ess_limits_are_the_envs_own_clip():
    """The env clips a request beyond ess_limits_kw to exactly that limit (its own rule)."""
    env = parallel_env()
    fleet = control.fleet_of(env)
    for soc0 in (0.02, 0.5, 0.97):
        env.reset(seed=0, options={"day": 3, "soc": [soc0] * 4})
        max_cha, max_dis = control.ess_limits_kw(fleet, np.full(4, soc0))
        for sign, limit in ((1.0, max_dis), (-1.0, -max_cha)):
            env.reset(seed=0, options={"day": 3, "soc": [soc0] * 4})
            act = control.to_actions(env, fleet, np.stack([fleet.mt_min_kw, sign * 1e4 * np.ones(4), np.zeros(4),
                                                           np.zeros(4)], axis=1))
            infos = env.step(act)[4]
            np.testing.assert_allclose([infos[a]["p_ess_kw"] for a in env.possible_agents], limit, rtol=1e-12)


def test_operational_limits_keep_soc_inside_the_band():
    env = parallel_env()
    fleet = control.fleet_of(env)
    for soc0 in (0.1, 0.12, 0.5, 0.88, 0.9):
        for sign in (1.0, -1.0):
            env.reset(seed=0, options={"day": 3, "soc": [soc0] * 4})
            max_cha, max_dis = control.ess_operational_limits_kw(fleet, np.full(4, soc0))
            p_ess = max_dis if sign > 0 else -max_cha
            act = control.to_actions(env, fleet, np.stack([fleet.mt_min_kw, p_ess, np.zeros(4), np.zeros(4)], axis=1))
            infos = env.step(act)[4]
            soc = np.array([infos[a]["soc"] for a in env.possible_agents])
            assert np.all(soc >= fleet.soc_min - 1e-6) and np.all(soc <= fleet.soc_max + 1e-6)
            assert all(infos[a]["soc_violation"] <= 1e-6 for a in env.possible_agents)


def test_balance_trade_closes_each_microgrid_balance():
    env = parallel_env()
    fleet = control.fleet_of(env)
    obs, _ = env.reset(seed=0, options={"day": 100})
    rng = np.random.default_rng(0)
    while env.agents:
        seen = control.observe(env, obs)
        p_mt = rng.uniform(fleet.mt_min_kw, fleet.mt_max_kw)
        max_cha, max_dis = control.ess_limits_kw(fleet, seen.soc)
        p_ess = rng.uniform(-max_cha, max_dis)
        p_grid = control.balance_trade_kw(seen, p_mt, p_ess)
        inside = (p_grid > fleet.grid_p_min_kw) & (p_grid < fleet.grid_p_max_kw)
        obs, _, _, _, infos = env.step(control.to_actions(env, fleet, [p_mt, p_ess, p_grid, seen.q_load_kvar]))
        p_net = np.array([infos[a]["p_net_kw"] for a in env.possible_agents])
        assert np.all(np.abs(p_net[inside]) < 0.05)  # float32 observations and actions


def test_the_three_controllers_share_one_merit_order_rule():
    """Rule-based policy, DiscreteActions(mt_levels="merit_order") and the chain's merit_order_mt stage give the
    same MT set-point at the same observation: one rule, three compositions."""
    env = parallel_env("paper_day_ahead")
    fleet = control.fleet_of(env)
    obs, _ = env.reset(seed=0, options={"day": 120})
    o = np.stack([obs[a] for a in env.possible_agents])
    want = control.merit_order_mt_kw(fleet, control.observe(env, o).price_eur_per_kwh)
    rule = RuleBasedPolicy(env).setpoints(o)[:, 0]
    wrapped = DiscreteActions(env, mt_levels="merit_order")
    disc = np.array([wrapped.setpoints(obs, {a: 0})[a][0] for a in env.possible_agents])
    chain = control.ActionChain(env, ["merit_order_mt"]).setpoints(o, np.zeros((4, 4)))[:, 0]
    rule_mt = np.minimum(want, fleet.mt_max_kw)  # the rule-based MT may be raised further by its cover only
    np.testing.assert_array_equal(disc, want)
    np.testing.assert_array_equal(chain, want)
    assert np.all(rule >= rule_mt)


def test_action_chain_checks_its_stages_and_round_trips_its_spec():
    env = parallel_env()
    with pytest.raises(ValueError, match="unknown action stage"):
        control.ActionChain(env, ["balance", "teleport"])
    with pytest.raises(ValueError, match="'mt_cover' needs 'balance'"):
        control.ActionChain(env, ["mt_cover"])
    chain = control.ActionChain(env, ["soc_shield", "balance"], residual=0.5)
    again = control.ActionChain(env, **chain.spec)
    obs, _ = env.reset(seed=0)
    o = np.stack([obs[a] for a in env.possible_agents])
    a = np.random.default_rng(1).uniform(-1, 1, (4, 4))
    np.testing.assert_array_equal(chain(o, a), again(o, a))
    np.testing.assert_array_equal(control.ActionChain(env, ())(o, 3 * a), np.clip(3 * a, -1, 1))
    with pytest.raises(TypeError, match="mmgrid_env environment"):
        control.fleet_of(object())


def test_a_cost_term_added_in_one_place_reaches_reward_infos_and_oracle(monkeypatch):
    """One new lower-layer cost term, added to devices.LOWER_COST_TERMS only (a 3 ct/kWh levy on the turbine's
    output): the env reports it in infos and charges it in the reward, the oracle optimises with it (runs its
    turbines less), and the oracle's dispatch replayed through the env gives the oracle's objective."""
    from mmgrid_env import devices, replay, solve_day

    levy = devices.CostTerm("cost_mt_levy_eur", lambda mg, x, mul: mul(0.03, x.p_mt_kw))
    plain_env = parallel_env()
    plain = solve_day("paper", 184)
    monkeypatch.setattr(devices, "LOWER_COST_TERMS", devices.LOWER_COST_TERMS + (levy,))
    env = parallel_env()
    assert "cost_mt_levy_eur" in env.agent_info_keys and "cost_mt_levy_eur" not in plain_env.agent_info_keys
    act = {a: np.full(4, 0.5, np.float32) for a in env.possible_agents}
    for e in (env, plain_env):
        e.reset(seed=0, options={"day": 184})
    _, rew, _, _, infos = env.step(act)
    _, rew0, _, _, infos0 = plain_env.step(act)
    for a in env.possible_agents:
        d = infos[a]
        assert d["cost_mt_levy_eur"] == pytest.approx(0.03 * d["p_mt_kw"], rel=1e-12)
        assert d["cost_lower_eur"] == pytest.approx(infos0[a]["cost_lower_eur"] + d["cost_mt_levy_eur"], rel=1e-12)
    levies = sum(infos[a]["cost_mt_levy_eur"] for a in env.possible_agents)
    assert sum(rew.values()) == pytest.approx(sum(rew0.values()) - levies, rel=1e-9)  # α = 1
    levied = solve_day("paper", 184)
    assert levied.dispatch["p_mt_kw"].sum() < plain.dispatch["p_mt_kw"].sum()  # the oracle sees the levy
    np.testing.assert_allclose(levied.dispatch["cost_mt_levy_eur"], 0.03 * levied.dispatch["p_mt_kw"], rtol=1e-9)
    assert replay(levied, "paper").objective_eur == pytest.approx(levied.objective_eur, rel=1e-4)


def test_merit_order_with_a_tariff_by_hand():
    """With a grid fee g (and export fee e) the MT's kWh is worth c + g while it replaces imports and c − e beyond:
    P_MT = clip(deficit, P(c − e), P(c + g)). Without fees the deficit does not matter."""
    fleet = control.fleet_of("paper")  # a = 1e-4 €/kW²h; b = 0.085, 0.095, 0.08, 0.09 €/kWh; max 120/100/200/150 kW
    c, g = 0.09, 0.02
    p_sell = np.clip([(c - b) / 2e-4 for b in (0.085, 0.095, 0.08, 0.09)], 0, [120, 100, 200, 150])
    p_buy = np.clip([(c + g - b) / 2e-4 for b in (0.085, 0.095, 0.08, 0.09)], 0, [120, 100, 200, 150])
    np.testing.assert_allclose(p_sell, [25, 0, 50, 0]) and np.testing.assert_allclose(p_buy, [120, 75, 150, 100])
    deficit = np.array([60.0, 500.0, -40.0, 30.0])
    got = control.merit_order_mt_kw(fleet, c, deficit, tariff=(g, 0.0))
    np.testing.assert_allclose(got, [60.0, 75.0, 50.0, 30.0])  # covers the deficit, within [P(c − e), P(c + g)]
    # an export fee lowers the floor: P(c − e)
    np.testing.assert_allclose(control.merit_order_mt_kw(fleet, c, -np.ones(4), tariff=(g, 0.005)), [0, 0, 25, 0])
    # no fees: the plain merit order whatever the deficit; unknown deficit: the export-side output
    np.testing.assert_array_equal(control.merit_order_mt_kw(fleet, c, deficit), control.merit_order_mt_kw(fleet, c))
    np.testing.assert_allclose(control.merit_order_mt_kw(fleet, c, None, tariff=(g, 0.0)), p_sell)
    assert control.tariff_of("feeder") == (pytest.approx(0.071), 0.0) and control.tariff_of("paper") == (0.0, 0.0)


def test_rule_based_sees_the_tariff_and_schedules_what_it_is_told():
    """On the feeder preset (grid fee 0.071 €/kWh) the rules run the MT against the import price where the
    microgrid has a deficit; ``schedule`` scales the trade with the main grid, the rest left to the feeder."""
    env = parallel_env("feeder")
    obs, _ = env.reset(seed=0, options={"day": 1, "split": "validation"})
    o = np.stack([obs[a] for a in env.possible_agents])
    seen = control.observe(env, o)
    fleet = control.fleet_of(env)
    sp = RuleBasedPolicy(env).setpoints(o)
    c = float(seen.price_eur_per_kwh[0])
    deficit = seen.load_kw - seen.pv_kw - seen.wt_kw - sp[:, 1]
    np.testing.assert_allclose(sp[:, 0], control.merit_order_mt_kw(fleet, c, deficit, (0.071, 0.0)), atol=1e-9)
    assert np.any(sp[:, 0] > control.merit_order_mt_kw(fleet, c) + 1.0)  # more MT than the plain merit order
    half = RuleBasedPolicy(env, schedule=0.5).setpoints(o)
    np.testing.assert_allclose(half[:, 2], 0.5 * sp[:, 2]) and np.testing.assert_allclose(half[:, :2], sp[:, :2])
    with pytest.raises(ValueError, match="schedule must be in"):
        RuleBasedPolicy(env, schedule=1.5)


def test_merit_order_stage_sees_the_tariff():
    """The learners' ``merit_order_mt`` stage runs the MT as the rules do: on a feeder with a grid fee it covers the
    deficit left by the battery; without a fee it is the plain merit order."""
    for preset in ("feeder", "paper_day_ahead"):
        env = parallel_env(preset)
        obs, _ = env.reset(seed=0, options={"day": 1, "split": "validation"})
        o = np.stack([obs[a] for a in env.possible_agents])
        a = np.random.default_rng(0).uniform(-1, 1, (4, 4))
        chain = control.ActionChain(env, ("merit_order_mt",))
        sp = chain.setpoints(o, a)
        seen, fleet = control.observe(env, o), control.fleet_of(env)
        max_cha, max_dis = control.ess_limits_kw(fleet, seen.soc)
        deficit = seen.load_kw - seen.pv_kw - seen.wt_kw - np.clip(sp[:, 1], -max_cha, max_dis)
        want = control.merit_order_mt_kw(fleet, seen.price_eur_per_kwh, deficit, control.tariff_of(env))
        np.testing.assert_allclose(sp[:, 0], want, atol=1e-9)
        if preset == "paper_day_ahead":
            np.testing.assert_allclose(sp[:, 0], control.merit_order_mt_kw(fleet, seen.price_eur_per_kwh))
