"""Only generation can be curtailed (env v1): curtailment ≤ PV + WT; the rest of a surplus that the
export headroom cannot take is spilled at VOLL — in the per-step OPF (fast path and cvxpy reference), the env and
the oracle. At negative prices, buying at the trade limit and having the purchase "curtailed" is no longer free."""

from __future__ import annotations

import numpy as np
import pytest

from mmgrid_env import ConicOPF, OPFConfig, build_network, parallel_env, replay, solve_day
from mmgrid_env.opf import build_cvxpy_opf, solve_cvxpy_opf

LIMITS = dict(grid_p_min_kw=[-300.0] * 4, grid_p_max_kw=[300.0] * 4, grid_q_min_kvar=[-200.0] * 4,
              grid_q_max_kvar=[200.0] * 4)


def _opf():
    return ConicOPF(build_network([1, 2, 5, 24]), OPFConfig(), **LIMITS)


@pytest.mark.parametrize("price", [0.12, -0.05])
def test_curtailment_is_bounded_by_generation_and_the_rest_is_spilled(price):
    """Every microgrid already sells at its export limit (no headroom): 750 kW of surplus against 300 kW of PV + WT.
    Hand-computed answer: all 300 kW of generation curtailed (mg_2 curtails 100 kW of its own PV while 50 kW of
    mg_0's surplus flows in; 1e-4 €/kWh), 450 kW spilled at VOLL (10 €/kWh), exact relaxation."""
    opf = _opf()
    p = [500.0, 200.0, 50.0, 0.0]
    ren = [100.0, 100.0, 100.0, 0.0]
    res = opf.solve(p, [0.0] * 4, price, [-300.0] * 4, [0.0] * 4, ren)
    np.testing.assert_allclose(res.curtailment_kw, [100.0, 100.0, 100.0, 0.0], atol=1e-5)
    assert res.spill_kw.sum() == pytest.approx(450.0, abs=0.05)  # less the physical losses of routing 50 kW
    assert np.all(res.spill_kw <= np.maximum(p, 0) + 1e-6)
    assert res.relaxation_gap_pu <= 1e-6 and res.exactness_repair == 1  # fictitious losses would be cheaper
    assert res.objective_eur == pytest.approx(res.spill_kw.sum() * 10.0 + 300.0 * 1e-4 + res.loss_cost_eur, rel=1e-6)
    # without the renewable bound (the OPF-only API's default) the whole surplus is curtailed, as in env v0
    free = opf.solve(p, [0.0] * 4, price, [-300.0] * 4, [0.0] * 4)
    assert free.spill_kw.sum() < 1e-6 and free.curtailment_kw.sum() == pytest.approx(750.0, abs=1e-4)


def test_reference_formulation_agrees_with_spill():
    """The cvxpy reference (the formulation as written) gives the same curtailment, spill and objective where the
    relaxation is exact (export headroom left on one microgrid, so nothing needs to be spilled there)."""
    opf = _opf()
    limits = tuple(np.asarray(v, float) for v in LIMITS.values())
    problem = build_cvxpy_opf(opf.net, opf.cfg, 4)
    rng = np.random.default_rng(4)
    for _ in range(6):
        p = rng.uniform(-200, 600, 4)
        ren = rng.uniform(0, 300, 4)
        pg = np.where(rng.random(4) < 0.5, -300.0, rng.uniform(-300, 300, 4))
        price = float(rng.uniform(-0.1, 0.3))
        res = opf.solve(p, np.zeros(4), price, pg, np.zeros(4), ren)
        if res.exactness_repair:
            continue
        ref = solve_cvxpy_opf(opf.net, opf.cfg, p, np.zeros(4), price, limits, pg, np.zeros(4), problem=problem,
                              renewable_kw=ren)
        assert res.objective_eur == pytest.approx(ref["objective_eur"], rel=1e-5, abs=1e-4)
        assert res.spill_kw.sum() == pytest.approx(ref["spill_kw"].sum(), abs=1e-3)
        assert res.curtailment_kw.sum() == pytest.approx(ref["curtailment_kw"].sum(), abs=1e-3)


def test_env_never_curtails_more_than_generation():
    """Random and limit-hitting actions over whole days (negative-price day 104 included): curtailment never
    exceeds the microgrid's PV + WT output, and a surplus beyond it shows up as export or spill, not for free."""
    env = parallel_env()
    rng = np.random.default_rng(0)
    checked = 0
    for day in (104, 109, 4):
        env.reset(seed=0, options={"day": day})
        while env.agents:
            act = {a: rng.choice([-1.0, 1.0], 4).astype(np.float32) for a in env.agents}
            infos = env.step(act)[4]
            for a in env.possible_agents:
                d = infos[a]
                assert d["curtailment_kw"] <= d["p_pv_kw"] + d["p_wt_kw"] + 1e-6
                assert d["spill_kw"] <= max(d["p_net_kw"], 0.0) + 1e-6
                checked += 1
            assert infos["mg_0"]["relaxation_gap_pu"] <= 1e-6
    assert checked == 3 * 24 * 4


def test_negative_price_purchase_is_not_a_money_pump():
    """Hour 12 of day 104 (2024-04-14) has a negative price. Buying at the trade limit beyond what the microgrid can
    use now costs: the surplus beyond PV + WT must be exported at π⁻ < 0 or spilled, so it is cheaper to buy only
    what the microgrid can use (the rule-based policy's choice) than to buy the maximum."""
    env = parallel_env()
    env.reset(seed=0, options={"day": 104})
    price = env.dataset.price_eur_per_kwh[104, 12]
    assert price < 0

    def hour12_cost(buy):
        env.reset(seed=0, options={"day": 104})
        for _ in range(12):
            env.step({a: np.zeros(4, np.float32) for a in env.agents})
        f = env.fleet
        seen_load = np.array([env.dataset.load_pu[104, 12] * f.load_peak_kw[i] for i in range(f.n)])
        p_grid = f.grid_p_max_kw if buy == "max" else np.minimum(seen_load, f.grid_p_max_kw)
        infos = env.step(env.action_from_setpoints(f.mt_min_kw, 0.0, p_grid, 0.0))[4]
        return infos["mg_0"]["cost_total_eur"], infos

    cost_max, infos_max = hour12_cost("max")
    cost_use, _ = hour12_cost("use")
    assert cost_use < cost_max
    assert all(infos_max[a]["curtailment_kw"] <= infos_max[a]["p_pv_kw"] + infos_max[a]["p_wt_kw"] + 1e-6
               for a in env.possible_agents)


def test_oracle_curtails_generation_only_and_replays():
    res = solve_day("paper", 104)
    d = res.dispatch
    assert np.all(d["curtailment_kw"] <= d["p_pv_kw"] + d["p_wt_kw"] + 1e-6)
    assert res.relaxation_gap_pu <= 1e-6 and res.bound_violation_kw <= 1e-3  # kW: the env's bounds hold
    rep = replay(res, "paper")
    assert rep.objective_eur == pytest.approx(res.objective_eur, rel=1e-4)  # the env reproduces it


@pytest.mark.parametrize("solver", ["clarabel", "ecos"])
@pytest.mark.parametrize("price", [0.1, -0.05])
def test_dlmp_is_the_marginal_cost_of_consumption(solver, price):
    """The nodal price reported per microgrid (the dual of its power balance) equals the finite difference of the
    OPF objective for one kWh more consumed there (central difference, 0.5 kWh steps)."""
    opf = ConicOPF(build_network([1, 2, 5, 24]), OPFConfig(solver=solver), **LIMITS)
    p, q = np.array([50.0, -80.0, 20.0, -30.0]), np.zeros(4)
    pg, ren = np.array([0.0, 100.0, -50.0, 0.0]), np.full(4, 100.0)
    res = opf.solve(p, q, price, pg, q, ren)
    assert res.solver == solver
    for m in range(4):
        step = np.zeros(4)
        step[m] = 0.5
        up = opf.solve(p - step, q, price, pg, q, ren).objective_eur
        down = opf.solve(p + step, q, price, pg, q, ren).objective_eur
        assert res.dlmp_eur_per_kwh[m] == pytest.approx((up - down) / 1.0, abs=2e-6)


def test_dlmp_carries_the_losses_of_supplying_a_node_through_the_network():
    """mg_3 (bus 17, the feeder's end) needs 100 kW more but already imports at its limit: its next kWh comes from
    a neighbour's headroom through the network, so its nodal price is the balancing price plus the marginal
    losses of that path; a neighbour with headroom of its own pays just the balancing price."""
    opf = ConicOPF(build_network([1, 5, 10, 17], aggregation="sum"), OPFConfig(), **LIMITS)
    res = opf.solve([0.0, 0.0, 0.0, -100.0], np.zeros(4), 0.1, [0.0, 0.0, 0.0, 300.0], np.zeros(4), np.zeros(4))
    assert res.shedding_kw.sum() < 1e-6 and res.losses_kw > 0
    assert res.dlmp_eur_per_kwh[:3] == pytest.approx([0.12] * 3, abs=1e-4)  # π⁺ at c = 0.1, κ = 0.2
    assert res.dlmp_eur_per_kwh[3] > max(res.dlmp_eur_per_kwh[:3]) + 1e-4


def test_dlmp_belongs_to_its_microgrid_whatever_the_node_order():
    """Microgrids listed in another order than the network's nodes (by depth): each price is its own."""
    opf = ConicOPF(build_network([24, 5, 17, 2], aggregation="sum"), OPFConfig(), **LIMITS)
    p, q = np.array([40.0, -60.0, -100.0, 30.0]), np.zeros(4)
    pg = np.array([0.0, 0.0, 300.0, 0.0])  # bus 17's own import at its limit: its price carries losses
    res = opf.solve(p, q, 0.1, pg, q, np.zeros(4))
    for m in range(4):
        step = np.zeros(4)
        step[m] = 0.5
        fd = opf.solve(p - step, q, 0.1, pg, q, np.zeros(4)).objective_eur - \
            opf.solve(p + step, q, 0.1, pg, q, np.zeros(4)).objective_eur
        assert res.dlmp_eur_per_kwh[m] == pytest.approx(fd, abs=2e-6), m
