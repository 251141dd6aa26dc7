"""The OPF on the full case33bw feeder (topology "feeder"): every bus and line, the feeder's own load, the
substation the only connection to the main grid. Checked against pandapower's AC power flow, the cvxpy reference,
finite differences, and in the env."""

from __future__ import annotations

import numpy as np
import pytest

from mmgrid_env import ConfigError, ConicOPF, OPFConfig, build_network, parallel_env, solve_day
from mmgrid_env.opf import build_cvxpy_opf, solve_cvxpy_opf

BUSES = [17, 21, 24, 32]
LIMITS = dict(grid_p_min_kw=[-300.0] * 4, grid_p_max_kw=[300.0] * 4, grid_q_min_kvar=[-200.0] * 4,
              grid_q_max_kvar=[200.0] * 4)
# (substation set-point, load scale, p, P_grid): light load; peak load; reverse flow with spill; peak, no action
CASES = [
    (1.00, 0.5, [100.0, -50.0, 30.0, -80.0], [0.0, 50.0, -30.0, 80.0]),
    (1.03, 1.0, [100.0, -50.0, 30.0, -80.0], [0.0, 50.0, -30.0, 80.0]),
    (1.02, 0.3, [300.0, 250.0, 280.0, 300.0], [-300.0] * 4),
    (1.00, 1.0, [0.0] * 4, [0.0] * 4),
]


@pytest.fixture(scope="module")
def feeder():
    return build_network(BUSES, topology="feeder")


@pytest.mark.parametrize("v0, scale, p, pg", CASES)
def test_feeder_opf_agrees_with_pandapower_ac_power_flow(feeder, v0, scale, p, pg):
    """The OPF's final injections (the microgrids' own net, the feeder's load) in pandapower's Newton-Raphson power
    flow on the same 33 buses: the same voltages (≤ 1e-5 p.u.) and losses (≤ 0.1 kW); reverse flow and binding
    voltage limits included."""
    import pandapower as pp

    opf = ConicOPF(feeder, OPFConfig(substation_v_pu=v0), **LIMITS)
    res = opf.solve(p, np.zeros(4), 0.1, pg, np.zeros(4), [100.0] * 4, scale)
    assert res.relaxation_gap_pu <= 1e-6 and res.status_code == 0
    pn, qn = opf.node_injections_kw(p, np.zeros(4), res, pg, scale)
    net = feeder.to_pandapower(pn, qn, background=False, root_v_pu=v0)
    pp.runpp(net, tolerance_mva=1e-10)
    assert np.max(np.abs(net.res_bus.vm_pu.to_numpy() - res.v_pu)) <= 1e-5
    assert abs(1000 * net.res_line.pl_mw.sum() - res.losses_kw) <= 0.1
    # the settlement: ΔP is what each microgrid takes beyond its schedule
    np.testing.assert_allclose(res.delta_p_kw, -np.asarray(p) + res.curtailment_kw - res.shedding_kw + res.spill_kw,
                               atol=1e-6)


def test_feeder_voltage_limits_bind_and_microgrids_support_them(feeder):
    """At peak load with the substation at 1.0 p.u., the feeder alone falls to 0.913 p.u.; the OPF holds 0.95 with
    the microgrids' reactive support at its limits (no voltage violation, nothing shed)."""
    opf = ConicOPF(feeder, OPFConfig(substation_v_pu=1.0), **LIMITS)
    res = opf.solve([0.0] * 4, np.zeros(4), 0.1, [0.0] * 4, np.zeros(4), [0.0] * 4, 1.0)
    assert res.v_pu.min() == pytest.approx(0.95, abs=1e-6) and res.voltage_violation_pu <= 1e-9
    assert res.shedding_kw.sum() < 1e-6 and np.max(res.delta_q_kvar) == pytest.approx(200.0, abs=1e-3)


@pytest.mark.parametrize("v0, scale, p, pg", CASES[:3])
def test_feeder_fast_path_matches_the_cvxpy_reference(feeder, v0, scale, p, pg):
    cfg = OPFConfig(substation_v_pu=v0)
    opf = ConicOPF(feeder, cfg, **LIMITS)
    res = opf.solve(p, np.zeros(4), 0.1, pg, np.zeros(4), [100.0] * 4, scale)
    limits = tuple(np.asarray(v, float) for v in LIMITS.values())
    problem = build_cvxpy_opf(feeder, cfg, 4, base_mva=opf.solver_base_mva, obj_scale_eur=opf.obj_scale_eur)
    from mmgrid_env.opf import set_cvxpy_params

    set_cvxpy_params(problem[1], feeder, cfg, p, np.zeros(4), 0.1, limits, pg, np.zeros(4),
                     base_mva=opf.solver_base_mva, renewable_kw=[100.0] * 4, background_scale=scale)
    import cvxpy as cp

    problem[0].solve(solver=cp.CLARABEL)
    assert problem[0].value * opf.obj_scale_eur == pytest.approx(res.objective_eur, rel=1e-5, abs=1e-4)
    v_ref = np.sqrt(problem[2]["v"].value)
    np.testing.assert_allclose(res.v_pu, v_ref, atol=1e-5)
    ref = opf.solve_reference(p, np.zeros(4), 0.1, pg, np.zeros(4), [100.0] * 4, solver="CLARABEL",
                              background_scale=scale)
    assert ref.objective_eur == pytest.approx(res.objective_eur, rel=1e-5, abs=1e-4)
    assert solve_cvxpy_opf  # the module's reference solver stays importable


def test_feeder_dlmp_is_the_marginal_cost_of_consumption(feeder):
    """On the feeder a microgrid's nodal price is the balancing price plus the marginal losses and voltage support of
    its bus: the sum of the duals of its physical balance and of its settlement, checked by finite differences."""
    opf = ConicOPF(feeder, OPFConfig(substation_v_pu=1.03), **LIMITS)
    p, pg, q, ren = np.array([100.0, -50.0, 30.0, -80.0]), np.array([0.0, 50.0, -30.0, 80.0]), np.zeros(4), [100.0] * 4
    res = opf.solve(p, q, 0.1, pg, q, ren, 0.8)
    for m in range(4):
        step = np.zeros(4)
        step[m] = 0.5
        fd = opf.solve(p - step, q, 0.1, pg, q, ren, 0.8).objective_eur - \
            opf.solve(p + step, q, 0.1, pg, q, ren, 0.8).objective_eur
        assert res.dlmp_eur_per_kwh[m] == pytest.approx(fd, abs=2e-6)
    assert np.ptp(res.dlmp_eur_per_kwh) > 0.01  # the network makes the prices differ by bus


def test_feeder_env_steps_exactly_with_energy_accounting():
    """The env on the full feeder: random and limit-hitting actions, exact relaxation, every microgrid's
    settlement closes, Σ rewards = team reward, the feeder's balance closes."""
    env = parallel_env(microgrid_buses=BUSES, opf={"topology": "feeder", "substation_v_pu": 1.03})
    rng = np.random.default_rng(1)
    env.reset(seed=0, options={"day": 40})
    while env.agents:
        act = {a: rng.choice([-1.0, 1.0], 4).astype(np.float32) for a in env.agents}
        _, rew, _, _, infos = env.step(act)
        assert infos["mg_0"]["relaxation_gap_pu"] <= 1e-6
        for a in env.possible_agents:
            d = infos[a]
            assert d["delta_p_kw"] == pytest.approx(-d["p_net_kw"] + d["curtailment_kw"] - d["shedding_kw"]
                                                    + d["spill_kw"], abs=1e-6)
        assert sum(rew.values()) == pytest.approx(infos["mg_0"]["team_reward"], abs=1e-9)
        # the feeder's balance: the microgrids' own net, the substation and the feeder's load make the losses
        own = sum(infos[a]["p_net_kw"] - infos[a]["p_grid_kw"] - infos[a]["curtailment_kw"] + infos[a]["shedding_kw"]
                  - infos[a]["spill_kw"] for a in env.possible_agents)
        sysd = infos["mg_0"]
        assert own + sysd["substation_p_kw"] - sysd["background_load_kw"] == pytest.approx(sysd["loss_kw"], abs=1e-6)
        assert sysd["background_load_kw"] > 0


def test_feeder_oracle_is_exact_and_its_replay_reproduces_it():
    """The perfect-foresight day program on the full feeder (the same physics and settlement, all hours at once):
    exact relaxation, the env's bounds hold, and its dispatch replayed through the env gives its objective."""
    from mmgrid_env import make_config, replay

    cfg = make_config("paper", microgrid_buses=BUSES, opf={"topology": "feeder", "substation_v_pu": 1.03})
    res = solve_day(cfg, 104)
    assert res.relaxation_gap_pu <= 1e-6 and res.bound_violation_kw <= 1e-3
    assert replay(res, cfg).objective_eur == pytest.approx(res.objective_eur, rel=1e-4)
    with pytest.raises(ConfigError, match="topology must be"):
        make_config(opf={"topology": "meshed"})


@pytest.mark.parametrize("scale, p, pg", [(1.0, [5.0, -8.0], [0.0, 8.0]), (0.5, [20.0, 15.0], [-10.0, -10.0])])
def test_opf_on_another_radial_feeder_kerber_agrees_with_pandapower(scale, p, pg):
    """Any radial pandapower feeder works the same way: a Kerber low-voltage network (0.4 kV, the substation
    transformer's secondary as the root), two microgrids, checked against pandapower's AC power flow."""
    import pandapower as pp
    import pandapower.networks as pn

    net = build_network([5, 9], topology="feeder", feeder=pn.create_kerber_landnetz_freileitung_1())
    limits = dict(grid_p_min_kw=[-30.0] * 2, grid_p_max_kw=[30.0] * 2, grid_q_min_kvar=[-20.0] * 2,
                  grid_q_max_kvar=[20.0] * 2)
    opf = ConicOPF(net, OPFConfig(), **limits)
    res = opf.solve(p, np.zeros(2), 0.1, pg, np.zeros(2), [10.0, 10.0], scale)
    assert res.relaxation_gap_pu <= 1e-6
    pn_kw, qn_kvar = opf.node_injections_kw(p, np.zeros(2), res, pg, scale)
    check = net.to_pandapower(pn_kw, qn_kvar, background=False)
    pp.runpp(check, tolerance_mva=1e-12)
    assert np.max(np.abs(check.res_bus.vm_pu.to_numpy() - res.v_pu)) <= 1e-5
    assert abs(1000 * check.res_line.pl_mw.sum() - res.losses_kw) <= 0.1


def test_sharing_through_the_feeder_by_hand(feeder):
    """mg_0 has 100 kW to spare, mg_1 lacks 80 kW, neither scheduled it. Without sharing mg_1 buys at π⁺ = 0.12 and
    mg_0 sells at π⁻ = 0.08 (c = 0.1, κ = 0.2); with sharing 80 kW go from mg_0 to mg_1 at c + fee = 0.11 (the
    seller earning c): the team saves 80 × (0.12 − 0.11) + 80 × (0.10 − 0.08) = 2.40 €, and each side gains."""
    p, q, pg = np.array([100.0, -80.0, 0.0, 0.0]), np.zeros(4), np.zeros(4)
    res = {}
    for sharing in (False, True):
        opf = ConicOPF(feeder, OPFConfig(substation_v_pu=1.03, sharing=sharing, sharing_fee_eur_per_kwh=0.01),
                       **LIMITS)
        res[sharing] = opf.solve(p, q, 0.1, pg, q, np.zeros(4), 0.5)
        assert res[sharing].relaxation_gap_pu <= 1e-6
    on, off = res[True], res[False]
    assert off.objective_eur - on.objective_eur == pytest.approx(2.40, abs=1e-3)
    np.testing.assert_allclose(on.mg_lists.shared_kw[:2], [-80.0, 80.0], atol=1e-4)  # direction: mg_0 → mg_1
    assert on.mg_balancing_cost_eur[0] < off.mg_balancing_cost_eur[0]  # the seller earns more
    assert on.mg_balancing_cost_eur[1] < off.mg_balancing_cost_eur[1]  # the buyer pays less
    with pytest.raises(ConfigError, match="sharing needs opf.topology='feeder'"):
        parallel_env(opf={"sharing": True})


def test_retail_tariff_prices_schedules_and_balancing():
    """A grid fee g on imports: a scheduled purchase costs (c + g)·P in the lower layer, and an unscheduled deficit's
    nodal price is the balancing price plus g; the oracle with the tariff and sharing replays exactly."""
    from mmgrid_env import make_config, replay

    g = 0.05
    env = parallel_env(microgrid_buses=BUSES, opf={"topology": "feeder", "substation_v_pu": 1.03,
                                                     "grid_fee_eur_per_kwh": g})
    env.reset(seed=0, options={"day": 40})
    f = env.fleet
    buy = np.array([100.0, 0.0, 0.0, 0.0])
    infos = env.step(env.action_from_setpoints(f.mt_min_kw, 0.0, buy, 0.0))[4]
    c = infos["mg_0"]["price_eur_per_kwh"]
    assert infos["mg_0"]["cost_grid_eur"] == pytest.approx((c + g) * infos["mg_0"]["p_grid_kw"], rel=1e-12)
    assert infos["mg_0"]["p_grid_kw"] == pytest.approx(100.0, rel=1e-6)  # float32 actions
    deficit = [a for a in env.possible_agents if infos[a]["delta_p_kw"] > 1.0]
    assert deficit and all(infos[a]["dlmp_eur_per_kwh"] >= c * 1.2 + g - 1e-6 for a in deficit)
    cfg = make_config("paper", microgrid_buses=BUSES, opf={"topology": "feeder", "substation_v_pu": 1.03,
                                                           "grid_fee_eur_per_kwh": 0.08, "sharing": True})
    res = solve_day(cfg, 104)
    assert res.relaxation_gap_pu <= 1e-6
    assert replay(res, cfg).objective_eur == pytest.approx(res.objective_eur, rel=1e-4)


def test_feeder_preset_shares_and_its_oracle_replays():
    """The preset "feeder": heterogeneous SimBench microgrids at the feeder ends, tariff and sharing on. On a test
    day the oracle shares energy between microgrids and beats the same oracle with sharing off (the value of the
    network); its dispatch replayed through the env reproduces its objective (≤ 0.1 %)."""
    import dataclasses

    from mmgrid_env import make_config, replay
    from mmgrid_env.config import FEEDER_BUSES, SIMBENCH_MIX

    cfg = make_config("feeder")
    assert [m.bus for m in cfg.microgrids] == list(FEEDER_BUSES) == BUSES
    assert [(m.load_profile, m.pv_profile, m.wind_profile) for m in cfg.microgrids] == list(SIMBENCH_MIX)
    assert cfg.opf.topology == "feeder" and cfg.opf.sharing and cfg.opf.grid_fee_eur_per_kwh > 0
    assert len({m.load_profile for m in cfg.microgrids}) == 4  # four different load shapes
    on = solve_day(cfg, 104)
    off = solve_day(dataclasses.replace(cfg, opf=dataclasses.replace(cfg.opf, sharing=False)), 104)
    shared = np.asarray(on.dispatch["shared_kw"])
    assert shared.clip(0).sum() > 100.0  # kWh bought from neighbours over the day
    np.testing.assert_allclose(shared.sum(axis=-1), 0.0, atol=1e-6)  # every hour Σ bought = Σ sold
    assert on.objective_eur < off.objective_eur - 1.0
    assert replay(on, cfg).objective_eur == pytest.approx(on.objective_eur, rel=1e-3)
