"""The upper-layer SOCP OPF: exactness, AC validation, hand-solved cases, reference, fallbacks.

Conventions: injections are kW/kVar with surplus positive; edge k goes parent -> node k+1 and its flow is the
sending-end flow at the parent (positive = towards the child).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np
import pytest

from mmgrid_env.config import OPFConfig
from mmgrid_env.network import build_network
from mmgrid_env.opf import (STATUS_FALLBACK_SOLVER, STATUS_OPTIMAL, STATUS_SAFE_DISPATCH, ConicOPF,
                            balancing_prices, build_cvxpy_opf, loss_weight, reactive_cost, solve_cvxpy_opf)

pp = pytest.importorskip("pandapower")

GAP_TOL_PU = 1e-6  # relaxation exactness: max l - (P²+Q²)/v, per unit
BALANCE_TOL_KW = 1e-6  # node power balance
V_PP_TOL_PU = 1e-5  # OPF voltage vs pandapower's Newton-Raphson
LOSS_PP_TOL_KW = 0.1  # OPF losses vs pandapower


@functools.lru_cache(maxsize=None)
def _feeder():
    import pandapower.networks as pn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pn.case33bw()


@functools.lru_cache(maxsize=None)
def network(buses: tuple, aggregation: str = "mean"):
    return build_network(list(buses), aggregation=aggregation, feeder=_feeder())


def make_opf(buses, aggregation="mean", p_lim=300.0, q_lim=200.0, **cfg_kw) -> ConicOPF:
    """A ConicOPF with symmetric trade limits (scalars or one value per microgrid)."""
    net = network(tuple(buses), aggregation)
    M = len(buses)
    p_lim = np.broadcast_to(np.asarray(p_lim, float), (M,))
    q_lim = np.broadcast_to(np.asarray(q_lim, float), (M,))
    cfg = OPFConfig(impedance_aggregation=aggregation, **cfg_kw)
    return ConicOPF(net, cfg, -p_lim, p_lim, -q_lim, q_lim)


def flows_pu(opf: ConicOPF, res):
    """(P, Q, l, v²) per unit, recomputed from the reported kW/kVar/kA/p.u. fields."""
    net = opf.net
    bk = net.base_kw
    return (res.p_flow_kw / bk, res.q_flow_kvar / bk, (res.current_ka / net.i_base_ka) ** 2, res.v_pu ** 2)


def independent_gap(opf: ConicOPF, res) -> float:
    P, Q, l, v2 = flows_pu(opf, res)
    if opf.E == 0:
        return 0.0
    return float(np.max(l - (P ** 2 + Q ** 2) / v2[opf.net.edge_from]))


def balance_residual_kw(opf: ConicOPF, p_kw, q_kvar, res) -> tuple[float, float]:
    """Max |node balance residual| for P and Q (eq. 11, 12), kW/kVar, from the reported quantities."""
    net = opf.net
    bk = net.base_kw
    pn, qn = opf.node_injections_kw(p_kw, q_kvar, res)
    P, Q, l, _ = flows_pu(opf, res)
    out_p, out_q = np.zeros(net.n_nodes), np.zeros(net.n_nodes)
    np.add.at(out_p, net.edge_from, P)
    np.add.at(out_p, net.edge_to, -(P - net.r_pu * l))
    np.add.at(out_q, net.edge_from, Q)
    np.add.at(out_q, net.edge_to, -(Q - net.x_pu * l))
    return float(np.max(np.abs(out_p * bk - pn))), float(np.max(np.abs(out_q * bk - qn)))


def voltage_drop_residual(opf: ConicOPF, res) -> float:
    """Max |eq. 13 residual| in p.u.² from the reported quantities."""
    net = opf.net
    P, Q, l, v2 = flows_pu(opf, res)
    r, x = net.r_pu, net.x_pu
    rhs = v2[net.edge_from] - 2 * (r * P + x * Q) + (r ** 2 + x ** 2) * l
    return float(np.max(np.abs(v2[net.edge_to] - rhs))) if opf.E else 0.0


def run_pandapower(opf: ConicOPF, p_kw, q_kvar, res):
    pn, qn = opf.node_injections_kw(p_kw, q_kvar, res)
    ppnet = opf.net.to_pandapower(pn, qn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(ppnet, algorithm="nr", numba=False, lightsim2grid=False, tolerance_mva=1e-10, max_iteration=30)
    assert ppnet.converged
    return ppnet


def headroom(opf: ConicOPF, p_grid):
    """(buy, sell) headroom per microgrid, kW."""
    return (np.maximum(opf.grid_p_max_kw - p_grid, 0.0), np.maximum(p_grid - opf.grid_p_min_kw, 0.0))


# ---------------------------------------------------------------------------------------------- price rules
@pytest.mark.parametrize("c", [-0.2, -0.01, 0.0, 0.05, 0.3])
def test_balancing_price_rules(c):
    kappa = 0.2
    up, dn = balancing_prices(c, kappa)
    assert up >= max(c, 0.0) - 1e-15 and dn <= c + 1e-15  # buying never earns, selling earns at most c
    assert up - dn == pytest.approx(2 * kappa * abs(c) + (abs(c) if c < 0 else 0.0))
    assert balancing_prices(c, 0.0) == (pytest.approx(max(c, 0.0)), pytest.approx(c))
    assert loss_weight(c, 0.02) == max(c, 0.02)
    assert reactive_cost(c, OPFConfig()) == pytest.approx(0.01 * abs(c) + 1e-4)


# ---------------------------------------------------------------------------------------------- exactness
def _instance(rng, opf: ConicOPF, kind: str):
    M = opf.M
    pmax, qmax = opf.grid_p_max_kw, opf.grid_q_max_kvar
    if kind == "normal":
        p, q = rng.uniform(-500, 500, M), rng.uniform(-150, 150, M)
        pg = rng.uniform(-1, 1, M) * np.minimum(pmax, 300) * (rng.random(M) < 0.5)
        qg = rng.uniform(-1, 1, M) * np.minimum(qmax, 200) * (rng.random(M) < 0.5)
        price = rng.uniform(-0.05, 0.3)
    elif kind == "trade_bound":  # lower layer already used (part of) the limits: curtailment/shedding appear
        p, q = rng.uniform(-900, 900, M), rng.uniform(-300, 300, M)
        pg = rng.choice([-1.0, 1.0], M) * np.minimum(pmax, 300) * rng.uniform(0.7, 1.0, M)
        qg = rng.choice([-1.0, 1.0], M) * np.minimum(qmax, 200) * rng.uniform(0.7, 1.0, M)
        price = rng.uniform(0.01, 0.3)
    elif kind == "huge":  # MW-scale injections: voltage limits bind where the trade limits allow big flows
        p = rng.choice([-1.0, 1.0], M) * rng.uniform(1000, 9000, M)
        q = rng.uniform(-2000, 2000, M)
        pg, qg = rng.uniform(-300, 300, M), rng.uniform(-200, 200, M)
        price = rng.uniform(-0.1, 0.3)
    elif kind == "negative_price":
        p, q = rng.uniform(-800, 800, M), rng.uniform(-300, 300, M)
        pg, qg = rng.uniform(-300, 300, M), rng.uniform(-200, 200, M)
        price = rng.uniform(-0.2, -0.001)
    else:  # pragma: no cover
        raise ValueError(kind)
    return p, q, float(price), pg, qg


HUB = 8000.0  # a microgrid with a large trade limit: lets MW flows cross the network (voltage limits bind)
EXACTNESS_SETTINGS = [
    # (buses, p_lim, q_lim, opf config)
    ((1, 2, 5, 24), 300.0, 200.0, {}),
    ((1, 2, 5, 24), [HUB, 300, 300, 300], [HUB, 200, 200, 200], {}),
    ((1, 2, 5, 24), 300.0, 200.0, {"v_min_pu": 0.995, "v_max_pu": 1.005}),
    ((1, 2, 5, 8, 12, 18, 24, 29), [HUB] + [300] * 7, [HUB] + [200] * 7, {}),
    ((17, 21, 32), [300, HUB, 300], [200, HUB, 200], {"v_min_pu": 0.97, "v_max_pu": 1.03}),
    ((0, 3), 300.0, 200.0, {"v_min_pu": 0.995, "v_max_pu": 1.005}),
]
KINDS = ("normal", "trade_bound", "huge", "negative_price")


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_relaxation_is_exact_on_random_and_stressed_instances(aggregation):
    rng = np.random.default_rng(2024 if aggregation == "mean" else 7)
    n = n_curt = n_shed = n_vbind = n_neg = 0
    worst = {"gap": 0.0, "bal": 0.0, "vdrop": 0.0}
    for buses, p_lim, q_lim, cfg_kw in EXACTNESS_SETTINGS:
        opf = make_opf(buses, aggregation, p_lim, q_lim, **cfg_kw)  # one solver per setting, re-used
        vmin, vmax = opf.cfg.v_min_pu, opf.cfg.v_max_pu
        for i in range(48):
            p, q, price, pg, qg = _instance(rng, opf, KINDS[i % len(KINDS)])
            res = opf.solve(p, q, price, pg, qg)
            where = f"{buses} {cfg_kw} instance {i} ({KINDS[i % len(KINDS)]}): p={p}, price={price}"
            assert res.status_code in (STATUS_OPTIMAL, STATUS_FALLBACK_SOLVER), where + f" {res.errors}"
            gap = independent_gap(opf, res)
            assert gap <= GAP_TOL_PU, where + f": gap {gap:.3e}"
            assert res.relaxation_gap_pu == pytest.approx(gap, abs=1e-12)
            bal = max(balance_residual_kw(opf, p, q, res))
            assert bal < BALANCE_TOL_KW, where + f": balance residual {bal:.3e} kW"
            vdrop = voltage_drop_residual(opf, res)
            assert vdrop < 1e-8, where
            up, dn = headroom(opf, pg)
            # ΔP within what is left of the trade limits (1e-4 kW: ~1e-9 of the largest limit, solver tolerance)
            assert np.all(res.delta_p_kw <= up + 1e-4) and np.all(-res.delta_p_kw <= dn + 1e-4), where
            assert np.all(res.shedding_kw <= np.maximum(-p, 0) + 1e-6), where
            assert np.all(res.curtailment_kw <= np.maximum(p, 0) + 1e-6), where
            if res.voltage_penalty_eur < 1e-6:
                assert res.v_pu.max() <= vmax + 1e-7 and res.v_pu.min() >= vmin - 1e-7, where
            worst = {"gap": max(worst["gap"], gap), "bal": max(worst["bal"], bal),
                     "vdrop": max(worst["vdrop"], vdrop)}
            n += 1
            n_curt += res.curtailment_kw.sum() > 1.0
            n_shed += res.shedding_kw.sum() > 1.0
            n_vbind += bool(np.any(np.abs(res.v_pu[1:] - vmax) < 1e-6) or np.any(np.abs(res.v_pu[1:] - vmin) < 1e-6))
            n_neg += price < 0
    assert n >= 200
    # the stressed cases really happened
    assert n_curt >= 20 and n_shed >= 20 and n_vbind >= 10 and n_neg >= 30, (n_curt, n_shed, n_vbind, n_neg)
    print(f"{aggregation}: {n} instances, worst {worst}, curtailment {n_curt}, shedding {n_shed}, "
          f"voltage binding {n_vbind}, negative price {n_neg}")


# ---------------------------------------------------------------------------------------------- pandapower
def _pp_instances(opf: ConicOPF, rng):
    M = opf.M
    yield rng.uniform(-500, 500, M), rng.uniform(-150, 150, M), 0.12, np.zeros(M), np.zeros(M)
    # no main-grid headroom except at the first microgrid: every imbalance crosses the network
    pg = opf.grid_p_max_kw.copy()
    pg[0] = 0.0
    yield rng.uniform(-600, 100, M), rng.uniform(-200, 200, M), 0.08, pg, np.zeros(M)
    pg = opf.grid_p_min_kw.copy()
    pg[0] = 0.0
    yield rng.uniform(-100, 900, M), rng.uniform(-200, 200, M), 0.2, pg, np.zeros(M)


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
@pytest.mark.parametrize("buses", [(1, 2, 5, 24), (1, 2, 5, 8, 12, 18, 24, 29), (17, 21, 32), (0, 3)])
def test_opf_agrees_with_pandapower_ac_power_flow(buses, aggregation):
    M = len(buses)
    opf = make_opf(buses, aggregation, p_lim=[2500.0] + [300.0] * (M - 1), q_lim=[2000.0] + [200.0] * (M - 1))
    rng = np.random.default_rng(11)
    flows = []
    for p, q, price, pg, qg in _pp_instances(opf, rng):
        res = opf.solve(p, q, price, pg, qg)
        assert res.status_code == STATUS_OPTIMAL
        ppnet = run_pandapower(opf, p, q, res)
        v_pp = ppnet.res_bus.vm_pu.to_numpy()
        assert np.max(np.abs(res.v_pu - v_pp)) <= V_PP_TOL_PU
        loss_pp = float(ppnet.res_line.pl_mw.sum()) * 1000
        assert abs(res.losses_kw - loss_pp) <= LOSS_PP_TOL_KW
        # the OPF's root is no slack bus: its injections already balance, so the ext_grid exchanges ~nothing
        assert abs(float(ppnet.res_ext_grid.p_mw.iloc[0]) * 1000) <= LOSS_PP_TOL_KW
        assert abs(float(ppnet.res_ext_grid.q_mvar.iloc[0]) * 1000) <= LOSS_PP_TOL_KW
        assert np.allclose(res.current_ka, ppnet.res_line.i_ka.to_numpy(), atol=1e-6)  # 1 mA
        assert np.allclose(res.p_flow_kw, ppnet.res_line.p_from_mw.to_numpy() * 1000, atol=1e-3)
        flows.append(np.abs(res.p_flow_kw).max())
    assert max(flows) > 200  # the instances do move power through the network


def test_voltage_limit_binds_and_matches_pandapower():
    """A MW surplus downstream, sold at the root: the receiving-end voltage rise hits v_max."""
    opf = make_opf((1, 5), "sum", p_lim=[8000.0, 0.0], q_lim=[5000.0, 0.0], v_max_pu=1.01)
    p, q = np.array([0.0, 5000.0]), np.zeros(2)
    res = opf.solve(p, q, 0.1)
    assert res.status_code == STATUS_OPTIMAL and res.voltage_penalty_eur < 1e-6
    assert res.v_pu[1] == pytest.approx(1.01, abs=1e-7)  # binding
    assert res.p_flow_kw[0] < -1000  # power flows up to the root
    assert independent_gap(opf, res) <= GAP_TOL_PU
    ppnet = run_pandapower(opf, p, q, res)
    assert ppnet.res_bus.vm_pu.iloc[1] == pytest.approx(1.01, abs=V_PP_TOL_PU)
    assert float(ppnet.res_line.pl_mw.sum()) * 1000 == pytest.approx(res.losses_kw, abs=LOSS_PP_TOL_KW)
    loose = make_opf((1, 5), "sum", p_lim=[8000.0, 0.0], q_lim=[5000.0, 0.0], v_max_pu=1.2).solve(p, q, 0.1)
    assert loose.v_pu[1] > 1.01 + 1e-3  # without the limit the voltage would be higher
    assert res.objective_eur > loose.objective_eur


# ---------------------------------------------------------------------------------------------- by hand
def test_two_bus_case_solved_by_hand():
    """A at the root (bus 1) short 200 kW, B (bus 2) 200 kW surplus and 80 kVar surplus, with no main-grid access.

    B's surplus can only leave through the line, and routing it beats every alternative (curtailing B and
    buying at A costs π⁺ per kWh; B's reactive surplus costs 2c_q as slack, c_q when A absorbs it). The flow is
    thus P = r·l − p_B, Q = x·l − q_B at A's sending end (edge A→B), and with the cone tight and v_A = 1,
    l = P² + Q², a quadratic in l whose smaller root is the physical solution.
    """
    opf = make_opf((1, 2), "mean", p_lim=[300.0, 0.0], q_lim=[200.0, 0.0])
    net = opf.net
    bk = net.base_kw
    r, x = 0.4930 / (12.66 ** 2 / 10), 0.2511 / (12.66 ** 2 / 10)  # case33bw line 1-2
    assert (net.r_pu[0], net.x_pu[0]) == pytest.approx((r, x), rel=1e-12)
    p = np.array([-200.0, 200.0])
    q = np.array([0.0, 80.0])
    price = 0.1
    res = opf.solve(p, q, price)
    assert res.status_code == STATUS_OPTIMAL

    pb, qb = p[1] / bk, q[1] / bk
    z2 = r * r + x * x
    a = 1 + 2 * r * pb + 2 * x * qb
    l = (a - math.sqrt(a * a - 4 * z2 * (pb * pb + qb * qb))) / (2 * z2)
    P, Q = r * l - pb, x * l - qb
    assert l == pytest.approx(P * P + Q * Q, rel=1e-12)  # the root really is on the cone
    v_b = math.sqrt(1 - 2 * (r * P + x * Q) + z2 * l)
    losses_kw = r * l * bk
    dP_a = (P - p[0] / bk) * bk  # A buys exactly the line losses
    dQ_a = (Q - q[0] / bk) * bk  # A absorbs B's reactive surplus minus the line's reactive losses
    pi_up, _ = balancing_prices(price, 0.2)
    c_q = reactive_cost(price, opf.cfg)
    objective = loss_weight(price, 0.02) * losses_kw + pi_up * dP_a + c_q * abs(dQ_a)

    # Tolerances: measured errors are ~10x smaller. Reactive quantities carry ~1e-4 kVar of interior-point noise
    # (reactive power is priced at only c_q ≈ 1e-3 €/kVArh, so the solver resolves it less finely).
    assert res.p_flow_kw[0] == pytest.approx(P * bk, abs=1e-5)
    assert res.q_flow_kvar[0] == pytest.approx(Q * bk, abs=1e-3)
    assert res.current_ka[0] == pytest.approx(math.sqrt(l) * net.i_base_ka, rel=1e-5)
    assert res.losses_kw == pytest.approx(losses_kw, rel=1e-5)
    assert res.v_pu == pytest.approx([1.0, v_b], abs=1e-8)
    assert res.delta_p_kw == pytest.approx([dP_a, 0.0], abs=1e-5)
    assert res.delta_q_kvar == pytest.approx([dQ_a, 0.0], abs=2e-3)
    assert res.curtailment_kw.sum() + res.shedding_kw.sum() < 1e-5
    assert np.abs(res.q_slack_kvar).max() < 2e-3
    assert res.objective_eur == pytest.approx(objective, rel=5e-5)
    assert res.loss_cost_eur == pytest.approx(loss_weight(price, 0.02) * losses_kw, rel=1e-6)
    # sanity of the hand numbers themselves: ~0.3 kW of losses, B's voltage up a little (B feeds A)
    assert 0.1 < losses_kw < 1.0 and 1.0 < v_b < 1.002 and P < 0 and Q < 0


@pytest.mark.parametrize("price", [0.12, 0.03])
def test_mutual_support_routes_surplus_to_deficit(price):
    """A (bus 1) 150 kW surplus, B (bus 5) 150 kW deficit, both with main-grid headroom: with κ > 0 the OPF
    routes A→B instead of selling at π⁻ and buying at π⁺; the saving is (π⁺ − π⁻)·150 minus the loss costs."""
    opf = make_opf((1, 5), "mean")
    p, q = np.array([150.0, -150.0]), np.zeros(2)
    res = opf.solve(p, q, price)
    pi_up, pi_dn = balancing_prices(price, 0.2)
    separate = pi_up * 150 - pi_dn * 150  # each settles its own imbalance with the main grid
    assert separate == pytest.approx(2 * 0.2 * price * 150)
    assert res.p_flow_kw[0] > 149.0  # the edge goes A → B: positive = from A towards B
    # A sells nothing and the pair buys only the losses (who of the two buys them is a tie to ~1e-8 €)
    assert abs(res.delta_p_kw[0]) < 1e-2
    assert res.delta_p_kw.sum() == pytest.approx(res.losses_kw, abs=2e-5)
    assert 0.05 < res.losses_kw < 0.1
    w = loss_weight(price, 0.02)
    c_q = reactive_cost(price, opf.cfg)
    x_over_r = opf.net.x_pu[0] / opf.net.r_pu[0]
    hand = (w + pi_up) * res.losses_kw + c_q * x_over_r * res.losses_kw  # losses; reactive losses at c_q
    assert res.objective_eur == pytest.approx(hand, abs=2e-5)  # € (interior-point noise: a few 1e-6 €)
    saving = separate - res.objective_eur
    assert saving > 0.95 * separate
    # reverse roles: flow reverses
    rev = opf.solve(-p, q, price)
    assert rev.p_flow_kw[0] < -149.0
    # κ = 0: no reason to route (it only adds losses), both settle locally. Losses are quadratic in the flow,
    # so a residual flow of a fraction of a kW costs ~1e-9 € and is below what the solver resolves.
    flat = make_opf((1, 5), "mean", balancing_kappa=0.0).solve(p, q, price)
    assert abs(flat.p_flow_kw[0]) < 1.0 and flat.losses_kw < 1e-6
    assert flat.delta_p_kw == pytest.approx([-150.0, 150.0], abs=1.0)


# ---------------------------------------------------------------------------------------------- curtailment/shedding
def test_no_curtailment_or_shedding_with_ample_headroom():
    opf = make_opf((1, 2, 5, 24), "mean", p_lim=2000.0, q_lim=1000.0)
    rng = np.random.default_rng(5)
    for _ in range(40):
        p, q = rng.uniform(-600, 600, 4), rng.uniform(-200, 200, 4)
        res = opf.solve(p, q, rng.uniform(0.02, 0.3), rng.uniform(-300, 300, 4), rng.uniform(-200, 200, 4))
        assert res.curtailment_kw.max() < 1e-4 and res.shedding_kw.max() < 1e-4
        assert np.abs(res.q_slack_kvar).max() < 1e-3


def test_curtailment_and_shedding_only_when_trade_limits_bind():
    opf = make_opf((1, 2, 5, 24), "mean")
    rng = np.random.default_rng(6)
    seen = {"curt": 0, "shed": 0}
    for _ in range(150):
        p, q = rng.uniform(-900, 900, 4), rng.uniform(-150, 150, 4)
        pg = rng.uniform(-300, 300, 4) * (rng.random(4) < 0.7)
        price = rng.uniform(0.03, 0.3)
        res = opf.solve(p, q, price, pg)
        up, dn = headroom(opf, pg)
        assert np.all(res.shedding_kw <= np.maximum(-p, 0) + 1e-6)  # only a microgrid's own deficit
        assert np.all(res.curtailment_kw <= np.maximum(p, 0) + 1e-6)  # only its own surplus
        assert max(balance_residual_kw(opf, p, q, res)) < BALANCE_TOL_KW
        if res.shedding_kw.sum() > 1e-3:  # shedding ⇒ every microgrid's buy headroom is used up
            seen["shed"] += 1
            assert np.all(res.delta_p_kw >= up - 1e-3), (p, pg, res.delta_p_kw, up)
            assert res.curtailment_kw.sum() < 1e-3  # a surplus would have been routed to the deficit
        if res.curtailment_kw.sum() > 1e-3:  # curtailment (c > 0) ⇒ every sell headroom is used up
            seen["curt"] += 1
            assert np.all(-res.delta_p_kw >= dn - 1e-3), (p, pg, res.delta_p_kw, dn)
    assert seen["shed"] >= 10 and seen["curt"] >= 10, seen


def test_no_headroom_at_all_sheds_and_curtails_exactly():
    opf = make_opf((1, 2, 5, 24), "sum")
    pg = opf.grid_p_max_kw.copy()  # the lower layer bought all it may: no buy headroom left
    p = np.array([-120.0, -80.0, -50.0, -10.0])
    res = opf.solve(p, np.zeros(4), 0.1, pg)
    assert res.shedding_kw == pytest.approx(-p, abs=1e-5)
    assert res.delta_p_kw == pytest.approx(np.zeros(4), abs=1e-5)
    assert res.losses_kw < 1e-6
    assert res.objective_eur == pytest.approx(10.0 * 260.0, rel=1e-7)  # VOLL = 10 €/kWh
    pg = opf.grid_p_min_kw.copy()  # ... and no sell headroom
    res = opf.solve(-p, np.zeros(4), 0.1, pg)
    assert res.curtailment_kw == pytest.approx(-p, abs=1e-5)
    assert res.objective_eur == pytest.approx(1e-4 * 260.0, abs=2e-5)  # € (interior-point noise: ~3e-6 €)


# ---------------------------------------------------------------------------------------------- current limit
def test_current_limit_binds_and_is_respected():
    buses = (1, 5)
    p, q = np.array([500.0, -500.0]), np.zeros(2)
    free = make_opf(buses, "sum", p_lim=[300.0, 600.0]).solve(p, q, 0.1)
    assert free.current_ka[0] > 0.02  # ≈ 500 kW / (√3·12.66 kV) ≈ 22.8 A routed
    limit = 0.01
    opf = make_opf(buses, "sum", p_lim=[300.0, 600.0], current_limit_ka=limit)
    res = opf.solve(p, q, 0.1)
    assert res.status_code == STATUS_OPTIMAL
    assert res.current_ka.max() <= limit * (1 + 1e-7)
    assert res.current_ka[0] == pytest.approx(limit, rel=1e-6)  # binding
    assert independent_gap(opf, res) <= GAP_TOL_PU
    assert 200 < res.p_flow_kw[0] < 225  # ≈ √3·12.66 kV·10 A
    assert res.delta_p_kw[0] == pytest.approx(-(500 - res.p_flow_kw[0]), abs=1e-4)  # A sells the rest
    assert res.objective_eur > free.objective_eur
    ppnet = run_pandapower(opf, p, q, res)
    assert float(ppnet.res_line.i_ka.iloc[0]) <= limit * (1 + 1e-6)
    assert np.max(np.abs(ppnet.res_bus.vm_pu.to_numpy() - res.v_pu)) <= V_PP_TOL_PU


# ---------------------------------------------------------------------------------------------- cvxpy reference
REF_TOL = {  # measured discrepancies are ~10x below these (cvxpy's CLARABEL runs at its default tolerances)
    "ECOS": {"obj_rel": 1e-5, "loss_kw": 1e-3, "sum_dp_kw": 2e-3, "v": 3e-5},
    "CLARABEL": {"obj_rel": 1e-4, "loss_kw": 2e-3, "sum_dp_kw": 1e-2, "v": 1e-4},
}


@pytest.mark.parametrize("buses,aggregation", [((1, 2, 5, 24), "mean"), ((1, 2, 5, 24), "sum"),
                                               ((1, 2, 5, 8, 12, 18, 24, 29), "mean"), ((17, 21, 32), "sum")])
def test_fast_path_matches_cvxpy_reference(buses, aggregation):
    M = len(buses)
    opf = make_opf(buses, aggregation)
    limits = (opf.grid_p_min_kw, opf.grid_p_max_kw, opf.grid_q_min_kvar, opf.grid_q_max_kvar)
    problems = {s: build_cvxpy_opf(opf.net, opf.cfg, M) for s in REF_TOL}  # compiled once (DPP)
    rng = np.random.default_rng(1)
    for _ in range(8):
        p, q = rng.uniform(-500, 500, M), rng.uniform(-150, 150, M)
        price = rng.uniform(-0.05, 0.3)
        pg = rng.uniform(-300, 300, M) * (rng.random(M) < 0.5)
        qg = rng.uniform(-200, 200, M) * (rng.random(M) < 0.5)
        res = opf.solve(p, q, price, pg, qg)
        for solver, tol in REF_TOL.items():
            ref = solve_cvxpy_opf(opf.net, opf.cfg, p, q, price, limits, pg, qg, solver=solver,
                                  problem=problems[solver])
            assert ref["status"] in ("optimal", "optimal_inaccurate")
            assert abs(res.objective_eur - ref["objective_eur"]) <= tol["obj_rel"] * max(1.0, abs(ref["objective_eur"]))
            assert res.losses_kw == pytest.approx(ref["losses_kw"], abs=tol["loss_kw"])
            assert res.delta_p_kw.sum() == pytest.approx(ref["delta_p_kw"].sum(), abs=tol["sum_dp_kw"])
            assert res.v_pu == pytest.approx(ref["v_pu"], abs=tol["v"])
            assert ref["relaxation_gap_pu"] <= 1e-5


@pytest.mark.parametrize("buses,aggregation", [((1, 2, 5, 24), "mean"), ((1, 2, 5, 24), "sum"),
                                               ((17, 21, 32), "mean")])
def test_fast_path_matches_reference_decisions_when_unique(buses, aggregation):
    """Only one microgrid may trade with the main grid: every other imbalance must cross the network to it, so
    ΔP and the flows are unique and can be compared one by one."""
    M = len(buses)
    net = network(buses, aggregation)
    cfg = OPFConfig(impedance_aggregation=aggregation)
    rng = np.random.default_rng(2)
    for k in range(M):
        pmax = np.zeros(M)
        pmax[k] = 3000.0
        qmax = np.zeros(M)
        qmax[k] = 2000.0
        limits = (-pmax, pmax, -qmax, qmax)
        opf = ConicOPF(net, cfg, *limits)
        for _ in range(2):
            p, q = rng.uniform(-400, 400, M), rng.uniform(-100, 100, M)
            price = rng.uniform(0.02, 0.3)
            res = opf.solve(p, q, price)
            assert res.delta_p_kw[np.arange(M) != k] == pytest.approx(0.0, abs=1e-6)
            for solver in ("ECOS", "CLARABEL"):
                ref = solve_cvxpy_opf(net, cfg, p, q, price, limits, solver=solver)
                assert res.delta_p_kw == pytest.approx(ref["delta_p_kw"], abs=5e-3)
                assert res.p_flow_kw == pytest.approx(ref["p_flow_kw"], abs=5e-3)
                assert res.v_pu == pytest.approx(ref["v_pu"], abs=1e-5)
                assert res.curtailment_kw.sum() + res.shedding_kw.sum() < 1e-3
                assert res.objective_eur == pytest.approx(ref["objective_eur"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- fallbacks
def _raise(name):
    def f(self):
        raise RuntimeError(f"{name} broken on purpose")
    return f


FALLBACK_CASE = (np.array([250.0, -400.0, 300.0, -350.0]), np.array([40.0, -60.0, 20.0, 90.0]), 0.11,
                 np.array([0.0, 250.0, -250.0, 0.0]), np.zeros(4))


def test_fallback_to_ecos(monkeypatch):
    opf = make_opf((1, 2, 5, 24))
    base = opf.solve(*FALLBACK_CASE)
    assert base.status_code == STATUS_OPTIMAL and base.solver == "clarabel" and base.errors == []
    monkeypatch.setattr(ConicOPF, "_solve_clarabel", _raise("clarabel"))
    res = opf.solve(*FALLBACK_CASE)
    assert res.solver == "ecos" and res.status_code == STATUS_FALLBACK_SOLVER and res.status == "optimal"
    assert len(res.errors) == 1 and res.errors[0].startswith("clarabel") and "on purpose" in res.errors[0]
    assert res.objective_eur == pytest.approx(base.objective_eur, rel=1e-6, abs=1e-6)
    assert res.losses_kw == pytest.approx(base.losses_kw, abs=1e-3)
    assert independent_gap(opf, res) <= GAP_TOL_PU
    assert max(balance_residual_kw(opf, FALLBACK_CASE[0], FALLBACK_CASE[1], res)) < BALANCE_TOL_KW


def test_non_finite_solution_falls_back(monkeypatch):
    opf = make_opf((1, 2, 5, 24))
    monkeypatch.setattr(ConicOPF, "_solve_clarabel", lambda self: (np.full(self.n_var, np.nan), 0.0, 0))
    res = opf.solve(*FALLBACK_CASE)
    assert res.solver == "ecos" and res.status_code == STATUS_FALLBACK_SOLVER
    assert "non-finite" in res.errors[0]
    assert np.all(np.isfinite(res.v_pu))


def test_ecos_as_primary_solver():
    fast, ecos_ = make_opf((1, 2, 5, 24)), make_opf((1, 2, 5, 24), solver="ecos", fallback_solver="clarabel")
    a, b = fast.solve(*FALLBACK_CASE), ecos_.solve(*FALLBACK_CASE)
    assert b.solver == "ecos" and b.status_code == STATUS_OPTIMAL
    assert b.objective_eur == pytest.approx(a.objective_eur, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("fallback", ["ecos", "none"])
def test_safe_dispatch_when_every_solver_fails(monkeypatch, fallback):
    opf = make_opf((1, 2, 5, 24), fallback_solver=fallback)
    monkeypatch.setattr(ConicOPF, "_solve_clarabel", _raise("clarabel"))
    monkeypatch.setattr(ConicOPF, "_solve_ecos", _raise("ecos"))
    p, q, price, pg, qg = FALLBACK_CASE
    res = opf.solve(p, q, price, pg, qg)  # never raises
    assert res.status_code == STATUS_SAFE_DISPATCH and res.status == "safe_dispatch" and res.solver == "none"
    assert len(res.errors) == (2 if fallback == "ecos" else 1)
    assert all("on purpose" in e for e in res.errors)
    # every microgrid settles alone: node injections vanish, no flows, flat voltage
    pn, qn = opf.node_injections_kw(p, q, res)
    assert np.abs(pn).max() < 1e-9 and np.abs(qn).max() < 1e-9
    assert max(balance_residual_kw(opf, p, q, res)) < 1e-9
    assert np.all(res.p_flow_kw == 0) and res.losses_kw == 0 and np.all(res.v_pu == 1.0)
    up, dn = headroom(opf, pg)
    assert res.delta_p_kw == pytest.approx(np.clip(-p, -dn, up))
    assert res.shedding_kw == pytest.approx(np.maximum(-p - up, 0))  # MG 1: 400 kW deficit, 50 kW headroom
    assert res.curtailment_kw == pytest.approx(np.maximum(p - dn, 0))  # MG 2: 300 kW surplus, 50 kW headroom
    assert res.shedding_kw[1] == pytest.approx(350.0) and res.curtailment_kw[2] == pytest.approx(250.0)
    pi_up, pi_dn = balancing_prices(price, 0.2)
    c_q = reactive_cost(price, opf.cfg)
    dpu, dpd = np.maximum(res.delta_p_kw, 0), np.maximum(-res.delta_p_kw, 0)
    hand = (pi_up * dpu.sum() - pi_dn * dpd.sum() + 10.0 * res.shedding_kw.sum() + 1e-4 * res.curtailment_kw.sum()
            + c_q * np.abs(q).sum())
    assert res.objective_eur == pytest.approx(hand, rel=1e-9)
    # the persistent solver still works once the solvers are back
    monkeypatch.undo()
    assert opf.solve(p, q, price, pg, qg).status_code == STATUS_OPTIMAL


# ---------------------------------------------------------------------------------------------- persistence etc.
def test_persistent_solver_matches_fresh_solver():
    """The in-place data update (q, b) gives the same answer as a solver built for the instance."""
    rng = np.random.default_rng(9)
    opf = make_opf((1, 2, 5, 8, 12, 18, 24, 29), "sum")
    instances = [_instance(rng, opf, k) for k in KINDS * 3]
    first = [opf.solve(*inst) for inst in instances]
    for inst, a in zip(instances, first):
        b = make_opf((1, 2, 5, 8, 12, 18, 24, 29), "sum").solve(*inst)
        assert a.objective_eur == pytest.approx(b.objective_eur, rel=1e-9, abs=1e-9)
        assert a.v_pu == pytest.approx(b.v_pu, abs=1e-9)
    again = opf.solve(*instances[0])  # after other solves: no state leaks between steps
    assert again.objective_eur == pytest.approx(first[0].objective_eur, rel=1e-9, abs=1e-9)


def test_step_length_scales_costs_not_decisions():
    net = network((1, 2, 5, 24), "mean")
    cfg = OPFConfig()
    lim = (np.full(4, -300.0), np.full(4, 300.0), np.full(4, -200.0), np.full(4, 200.0))
    hour, half = ConicOPF(net, cfg, *lim), ConicOPF(net, cfg, *lim, dt_h=0.5)
    a, b = hour.solve(*FALLBACK_CASE), half.solve(*FALLBACK_CASE)
    assert b.objective_eur == pytest.approx(0.5 * a.objective_eur, rel=1e-6)
    assert b.delta_p_kw == pytest.approx(a.delta_p_kw, abs=1e-3)


def test_result_shapes_and_units():
    opf = make_opf((17, 21, 32))
    res = opf.solve(np.array([100.0, -50.0, 20.0]), np.zeros(3), 0.1)
    assert res.v_pu.shape == (5,) and res.p_flow_kw.shape == (4,) and res.delta_p_kw.shape == (3,)
    assert res.mg_balancing_cost_eur.shape == (3,)
    assert res.objective_eur == pytest.approx(res.loss_cost_eur + res.mg_balancing_cost_eur.sum()
                                              + res.voltage_penalty_eur, rel=1e-12)
    assert res.wall_time_s > 0 and res.solver_time_s > 0 and res.iterations > 0
    assert res.v_pu[0] == pytest.approx(1.0, abs=1e-9)  # the root (branching bus 1) is fixed
    pn, _ = opf.node_injections_kw(np.array([100.0, -50.0, 20.0]), np.zeros(3), res)
    assert pn[0] == 0.0 and pn[1] == 0.0  # branching nodes (buses 1 and 5) inject nothing
    with pytest.raises(ValueError, match="one value per microgrid"):
        ConicOPF(opf.net, opf.cfg, [-1.0], [1.0], [-1.0], [1.0])


def test_dataclass_config_is_used():
    """A changed VOLL changes the shedding cost accordingly (the config is read, not hard-coded)."""
    base = make_opf((1, 2))
    cfg = dataclasses.replace(base.cfg, voll_eur_per_kwh=3.0)
    opf = ConicOPF(base.net, cfg, base.grid_p_min_kw, base.grid_p_max_kw, base.grid_q_min_kvar,
                   base.grid_q_max_kvar)
    res = opf.solve(np.array([-100.0, -100.0]), np.zeros(2), 0.1, base.grid_p_max_kw)
    assert res.objective_eur == pytest.approx(3.0 * 200.0, rel=1e-7)


# ---------------------------------------------------------------------------------------------- reduced conic form
def _reference_solve(opf, p, q, price, limits, pg, qg, problems) -> dict:
    """The cvxpy formulation solved by ECOS at 1e-9 tolerances; where ECOS stops just short of them
    ("optimal_inaccurate": 2 of the 48 instances below, within 1e-7 p.u. of CLARABEL's voltages), the second solver's
    optimum is the reference instead, so no inaccurate answer is compared against."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
        ref = solve_cvxpy_opf(opf.net, opf.cfg, p, q, price, limits, pg, qg, solver="ECOS", problem=problems["ECOS"])
    ref["solver"] = "ECOS"
    if ref["status"] == "optimal_inaccurate":
        ref = solve_cvxpy_opf(opf.net, opf.cfg, p, q, price, limits, pg, qg, solver="CLARABEL",
                              problem=problems["CLARABEL"])
        ref["solver"] = "CLARABEL"
    assert ref["status"] == "optimal", ref["status"]
    return ref


@pytest.mark.parametrize("buses,aggregation,cfg_kw", [
    ((1, 2, 5, 8, 12, 18, 24, 29), "sum", {}),
    ((1, 2, 5, 24), "mean", {"reactive_slack_cost_factor": 1.0}),  # k = 1: the epigraph's outer pieces dropped
    ((17, 21, 32), "mean", {"v_min_pu": 1.002, "v_max_pu": 1.05}),  # the fixed root (1 p.u.) violates v_min
])
def test_reduced_conic_form_equals_cvxpy_formulation(buses, aggregation, cfg_kw):
    """ConicOPF solves a smaller rewrite (root voltage a constant, curtailment/shedding one variable, ΔQ and the
    reactive slack one variable with an epigraph cost); the cvxpy problem is the formulation as written. Same
    optimum on stressed instances (trade limits binding: curtailment, shedding and reactive slack in use)."""
    M = len(buses)
    opf = make_opf(buses, aggregation, **cfg_kw)
    limits = (opf.grid_p_min_kw, opf.grid_p_max_kw, opf.grid_q_min_kvar, opf.grid_q_max_kvar)
    problems = {s: build_cvxpy_opf(opf.net, opf.cfg, M) for s in REF_TOL}
    rng = np.random.default_rng(11)
    used = {"cur": 0, "shd": 0, "qslack": 0}
    repaired = 0
    for kind in KINDS * 4:
        p, q, price, pg, qg = _instance(rng, opf, kind)
        res = opf.solve(p, q, price, pg, qg)
        assert res.status_code == STATUS_OPTIMAL
        ref = _reference_solve(opf, p, q, price, limits, pg, qg, problems)
        tol = REF_TOL[ref["solver"]]
        used["cur"] += res.curtailment_kw.sum() > 1.0
        used["shd"] += res.shedding_kw.sum() > 1.0
        used["qslack"] += np.abs(res.q_slack_kvar).sum() > 1.0
        if res.exactness_repair == 1:  # the relaxation was inexact (v_min above the root's 1 p.u.) and was repaired:
            assert ref["relaxation_gap_pu"] > GAP_TOL_PU >= independent_gap(opf, res)  # exact, unlike the relaxation
            assert res.objective_eur >= ref["objective_eur"] * (1 - tol["obj_rel"])  # which is a lower bound
            repaired += 1
            continue
        assert abs(res.objective_eur - ref["objective_eur"]) <= tol["obj_rel"] * max(1.0, abs(ref["objective_eur"]))
        assert res.curtailment_kw.sum() == pytest.approx(ref["curtailment_kw"].sum(), rel=1e-6, abs=2e-3)
        assert res.shedding_kw.sum() == pytest.approx(ref["shedding_kw"].sum(), rel=1e-6, abs=2e-3)
        assert res.v_pu == pytest.approx(ref["v_pu"], abs=tol["v"])
        # what the result reports obeys the original formulation's bounds
        up, dn = headroom(opf, pg)
        assert np.all(res.delta_p_kw <= up + 1e-6) and np.all(res.delta_p_kw >= -dn - 1e-6)
        assert np.all(res.curtailment_kw <= np.maximum(p, 0) + 1e-6) and np.all(res.shedding_kw <= np.maximum(-p, 0) + 1e-6)
        q_up, q_dn = np.maximum(opf.grid_q_max_kvar - qg, 0), np.maximum(qg - opf.grid_q_min_kvar, 0)
        assert np.all(res.delta_q_kvar <= q_up + 1e-9) and np.all(res.delta_q_kvar >= -q_dn - 1e-9)
        assert np.all((np.abs(res.q_slack_kvar) < 1e-6) | (np.abs(res.delta_q_kvar) >= np.minimum(q_up, q_dn) - 1e-6))
        if ref["relaxation_gap_pu"] <= GAP_TOL_PU:  # v_min above the root's 1 p.u. can make the relaxation inexact
            assert independent_gap(opf, res) <= GAP_TOL_PU
        assert max(balance_residual_kw(opf, p, q, res)) < BALANCE_TOL_KW
    assert min(used.values()) > 0, used  # the instances exercise every merged variable


def test_reactive_slack_cheaper_than_dq_is_rejected():
    with pytest.raises(ValueError, match="reactive_slack_cost_factor"):
        make_opf((1, 2), reactive_slack_cost_factor=0.5)
    from mmgrid_env import ConfigError, make_config
    with pytest.raises(ConfigError, match="reactive_slack_cost_factor"):  # the env config says so first
        make_config(opf={"reactive_slack_cost_factor": 0.5})
    with pytest.raises(ConfigError, match="reactive_cost_rel"):
        make_config(opf={"reactive_cost_rel": -0.1})
