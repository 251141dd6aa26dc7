"""Tests of mmgrid_env.wrappers.DiscreteActions."""

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.conversions import parallel_to_aec

from mmgrid_env import DiscreteActions, parallel_env
from mmgrid_env.wrappers import PAPER_ESS_LEVELS


@pytest.fixture(autouse=True)
def _quiet(recwarn):  # the API tests pass reset options the env warns about
    yield


def test_parallel_api():
    parallel_api_test(DiscreteActions(parallel_env()), num_cycles=30)


def test_aec_api():
    api_test(parallel_to_aec(DiscreteActions(parallel_env())), num_cycles=30)


def test_spaces_cached_and_state_passes_through():
    base = parallel_env()
    env = DiscreteActions(base, mt_levels=3)
    assert env.action_space("mg_0") is env.action_space("mg_0")
    assert env.action_space("mg_1").n == 3 * 11
    assert env.observation_space("mg_0") is base.observation_space("mg_0")
    env.reset(seed=0)
    np.testing.assert_array_equal(env.state(), base.state())
    assert env.state_space == base.state_space
    assert env.unwrapped is base
    assert np.allclose(PAPER_ESS_LEVELS, np.linspace(-1, 1, 11))
    assert env.levels.shape == (33, 2)


def test_decoding_levels():
    env = DiscreteActions(parallel_env(), mt_levels=4)
    obs, _ = env.reset(seed=0, options={"day": 10})
    f = env.fleet
    k = 3 * 11 + 10  # MT at max, ESS level +1 (full discharge)
    sp = env.setpoints(obs, {"mg_0": k})["mg_0"]
    assert sp[0] == pytest.approx(f.mt_max_kw[0])
    assert sp[1] == pytest.approx(f.ess_discharge_max_kw[0])
    sp = env.setpoints(obs, {"mg_1": 0})["mg_1"]  # MT at min, full charge
    assert sp[0] == pytest.approx(f.mt_min_kw[1])
    assert sp[1] == pytest.approx(-f.ess_charge_max_kw[1])
    with pytest.raises(ValueError):
        env.setpoints(obs, {"mg_0": env.n_actions})


def test_grid_closes_balance():
    env = DiscreteActions(parallel_env())
    f = env.fleet
    rng = np.random.default_rng(0)
    checked = 0
    for day in (3, 120, 250):
        obs, _ = env.reset(seed=day, options={"day": day})
        while env.agents:
            obs, _, _, _, infos = env.step({a: int(rng.integers(env.n_actions)) for a in env.agents})
            for i, a in enumerate(env.possible_agents):
                d = infos[a]
                unclipped = f.grid_p_min_kw[i] + 1e-6 < d["p_grid_kw"] < f.grid_p_max_kw[i] - 1e-6
                if unclipped and abs(d["p_ess_clipped_kw"]) < 1e-9:
                    assert abs(d["p_net_kw"]) < 1e-2, d
                    checked += 1
                if unclipped:  # ess_feasible=True: the balance also closes when the SoC clips the battery
                    assert abs(d["p_net_kw"]) < 1e-2, d
                q_unclipped = f.grid_q_min_kvar[i] < d["q_grid_kvar"] < f.grid_q_max_kvar[i]
                if q_unclipped:
                    assert abs(d["q_net_kvar"]) < 1e-2
    assert checked > 100


def test_requested_mode_is_off_by_the_clip():
    env = DiscreteActions(parallel_env(), ess_feasible=False)
    obs, _ = env.reset(seed=0, options={"day": 5, "soc": [0.02, 0.02, 0.02, 0.02]})
    k = 10  # MT min, full discharge: the nearly empty battery clips
    _, _, _, _, infos = env.step({a: k for a in env.agents})
    d = infos["mg_0"]
    assert d["p_ess_clipped_kw"] > 1.0
    assert d["p_net_kw"] == pytest.approx(-d["p_ess_clipped_kw"], abs=1e-2)


def test_merit_order_mt():
    """mt_levels="merit_order": the MT runs at clip((c − b)/(2a)) of the observed price; the agent picks the ESS."""
    env = DiscreteActions(parallel_env(), mt_levels="merit_order")
    assert env.action_space("mg_0").n == len(PAPER_ESS_LEVELS)
    f = env.fleet
    obs, _ = env.reset(seed=0, options={"day": 4})
    seen_inside = seen_bounds = 0
    for price in (-0.05, 0.0, 0.05, 0.09, 0.1, 0.11, 0.2, 2.0):
        o = {a: v.copy() for a, v in obs.items()}
        for a in o:
            o[a][3] = price / env.config.price_scale_eur_per_kwh
        sp = env.setpoints(o, {a: 5 for a in o})  # ESS level 0
        for i, a in enumerate(env.possible_agents):
            c = float(np.float32(price / env.config.price_scale_eur_per_kwh)) * env.config.price_scale_eur_per_kwh
            expected = (c - f.mt_cost_b_eur_per_kwh[i]) / (2 * f.mt_cost_a_eur_per_kw2h[i])
            expected = min(max(expected, f.mt_min_kw[i]), f.mt_max_kw[i])
            assert sp[a][0] == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert sp[a][1] == 0.0
            if f.mt_min_kw[i] < expected < f.mt_max_kw[i]:
                seen_inside += 1
                # at the optimum the marginal cost equals the price
                assert 2 * f.mt_cost_a_eur_per_kw2h[i] * sp[a][0] + f.mt_cost_b_eur_per_kwh[i] == pytest.approx(c)
            else:
                seen_bounds += 1
    assert seen_inside > 0 and seen_bounds > 0  # both regimes were exercised
    with pytest.raises(ValueError, match="merit_order"):
        DiscreteActions(parallel_env(), mt_levels="economic")


def test_soc_shield_keeps_soc_inside_operational_limits():
    """ess_within_soc_limits=True: random ESS choices over whole days never leave [soc_min, soc_max]; without the
    shield the same choices do, and where the shield does not bind the request passes unchanged."""
    n_days, rng = 6, np.random.default_rng(0)
    choices = [[{a: int(rng.integers(11)) for a in parallel_env().possible_agents} for _ in range(24)]
               for _ in range(n_days)]
    viol = {}
    for shield in (False, True):
        env = DiscreteActions(parallel_env(), mt_levels="merit_order", ess_within_soc_limits=shield)
        f, worst, unchanged = env.fleet, 0.0, 0
        for d in range(n_days):
            obs, _ = env.reset(options={"day": d})
            for acts in choices[d]:
                asked = {a: PAPER_ESS_LEVELS[k] for a, k in acts.items()}
                obs, _, _, _, infos = env.step(acts)
                for i, a in enumerate(env.possible_agents):
                    soc = infos[a]["soc"]
                    worst = max(worst, f.soc_min[i] - soc, soc - f.soc_max[i])
                    rated = f.ess_discharge_max_kw[i] if asked[a] > 0 else f.ess_charge_max_kw[i]
                    if abs(infos[a]["p_ess_requested_kw"] - asked[a] * rated) < 1e-3:
                        unchanged += 1
        viol[shield] = worst
        if shield:
            assert unchanged > 0.3 * n_days * 24 * 4  # the shield binds near the limits only
    assert viol[False] > 0.02  # the unshielded random walk leaves the limits
    assert viol[True] <= 1e-6
