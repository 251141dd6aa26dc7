"""Tests of mmgrid_env.wrappers.DiscreteActions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
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


# ---------------------------------------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def denv():
    return DiscreteActions(parallel_env())


class _Index:  # any object with __index__ (e.g. a 0-d integer tensor) is an integer
    def __index__(self):
        return 3


@pytest.mark.parametrize("value", [3, np.int8(3), np.uint64(3), np.array(3), np.array([3], np.int16),
                                   np.array([[3]], np.uint8), _Index()],
                         ids=["int", "int8", "uint64", "0-d", "(1,)", "(1,1)", "__index__"])
def test_integer_kinds_decode_like_the_int(denv, value):
    obs, _ = denv.reset(seed=0, options={"day": 3})
    expected = denv.setpoints(obs, {"mg_2": 3})["mg_2"]
    np.testing.assert_array_equal(denv.setpoints(obs, {"mg_2": value})["mg_2"], expected)


@pytest.mark.parametrize("value, error, got", [
    (1.5, TypeError, "got 1.5 (float)"),
    (3.0, TypeError, "got 3.0 (float)"),  # integral, but an index is not a quantity: no silent cast
    (np.float32(2), TypeError, "(float32)"),
    ("3", TypeError, "got '3' (str)"),
    (True, TypeError, "got True (bool)"),  # an int subclass, but never meant as an action index
    (np.True_, TypeError, "(bool)"),
    (None, TypeError, "got None (NoneType)"),
    ([3], TypeError, "got [3] (list)"),
    (np.array([1.5]), TypeError, "1.5 (array of shape (1,) and dtype float64)"),
    (np.zeros(1), TypeError, "dtype float64"),  # an integral float array is rejected like 3.0
    (np.array([True]), TypeError, "dtype bool"),
    (np.array([1, 2], np.int64), TypeError, "an array of shape (2,) and dtype int64"),
    (np.array([], np.int64), TypeError, "an array of shape (0,)"),
    (-1, ValueError, "got -1 (int)"),
    (44, ValueError, "got 44 (int)"),
    (np.int64(2 ** 40), ValueError, "(int64)"),
    (np.array([44], np.int64), ValueError, "44 (array of shape (1,) and dtype int64)"),
], ids=["float", "integral-float", "np.float32", "str", "bool", "np.bool_", "None", "list", "float-array",
        "integral-float-array", "bool-array", "size-2-array", "empty-array", "negative", "n_actions", "huge",
        "array-out-of-range"])
def test_bad_action_is_rejected_naming_agent_value_and_range(denv, value, error, got):
    obs, _ = denv.reset(seed=0, options={"day": 3})
    actions = {a: 0 for a in denv.agents}
    actions["mg_1"] = value
    with pytest.raises(error) as exc:
        denv.step(actions)
    msg = str(exc.value)
    assert msg.startswith("action of mg_1 must be an integer in [0, 44), got ") and got in msg, msg
    assert "\n" not in msg
    with pytest.raises(error, match="action of mg_1"):  # setpoints validates the same way
        denv.setpoints(obs, {"mg_1": value})


def test_message_of_a_float_action(denv):
    denv.reset(seed=0)
    with pytest.raises(TypeError) as exc:
        denv.step({"mg_0": 1.5, "mg_1": 0, "mg_2": 0, "mg_3": 0})
    assert str(exc.value) == "action of mg_0 must be an integer in [0, 44), got 1.5 (float)"


def test_step_needs_exactly_the_live_agents_and_a_rejected_step_changes_nothing(denv):
    ref = DiscreteActions(parallel_env())
    obs_ref, _ = ref.reset(seed=0, options={"day": 7})
    denv.reset(seed=0, options={"day": 7})
    good = {a: 5 for a in denv.agents}
    with pytest.raises(ValueError, match=r"exactly the live agents .*missing \['mg_3'\], unknown \[\]"):
        denv.step({a: 5 for a in denv.agents[:3]})
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['mg_9'\]"):
        denv.step({**good, "mg_9": 5})
    with pytest.raises(TypeError, match="must be a dict"):
        denv.step([5, 5, 5, 5])
    with pytest.raises(TypeError, match="action of mg_3"):
        denv.step({**good, "mg_3": "5"})
    with pytest.raises(ValueError, match="unknown agent"):
        denv.setpoints(obs_ref, {"mg_9": 5})
    # nothing above reached the env: the next valid step is the day's first hour, as on a fresh env
    _, rew, _, _, infos = denv.step(good)
    _, rew_ref, _, _, infos_ref = ref.step(good)
    assert rew == rew_ref and infos["mg_0"]["soc"] == infos_ref["mg_0"]["soc"]


_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.boolean_dtypes(), hnp.complex_number_dtypes())
_actions = st.one_of(
    st.integers(-3, 50), st.integers(), st.floats(), st.text(max_size=4), st.booleans(), st.none(),
    st.lists(st.integers(0, 43), max_size=2),
    _dtypes.flatmap(lambda d: hnp.from_dtype(d).map(d.type)),  # NumPy scalars
    hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=2)),
)


def _as_index(value):
    """The action index ``value`` stands for, or None where it is not an integer (the wrapper's contract)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, np.ndarray):
        return int(value.reshape(-1)[0]) if value.dtype.kind in "iu" and value.size == 1 else None
    return int(value) if isinstance(value, (int, np.integer)) else None


@settings(max_examples=50, deadline=None)
@given(value=_actions, agent=st.sampled_from(["mg_0", "mg_1", "mg_2", "mg_3"]))
def test_any_action_is_decoded_exactly_or_rejected_naming_the_agent(denv, value, agent):
    obs, _ = denv.reset(seed=0, options={"day": 11})
    actions = {a: 7 for a in denv.agents}
    actions[agent] = value
    k = _as_index(value)
    try:
        sp = denv.setpoints(obs, {agent: value})[agent]
        _, rew, _, _, _ = denv.step(actions)
    except (TypeError, ValueError) as e:
        assert str(e).startswith(f"action of {agent} must be an integer in [0, 44), got "), e
        assert "\n" not in str(e)
        assert type(e) is (TypeError if k is None else ValueError)
        assert k is None or not 0 <= k < 44  # rejected only what is not a valid index
        return
    assert k is not None and 0 <= k < 44  # accepted only a valid index ...
    np.testing.assert_array_equal(sp, denv.setpoints(obs, {agent: k})[agent])  # ... decoded as that index
    assert all(np.isfinite(r) for r in rew.values())
