"""Bad input gets a clear error, never a silent wrong number; no state shared where a user does not expect it.

Config values, reset options, actions, OPF inputs, the CLI; property-based tests (hypothesis) over configs and
actions; solver fault injection; determinism and pickling.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmgrid_env
from mmgrid_env import (STATUS_FALLBACK_SOLVER, STATUS_OPTIMAL, ConfigError, ConicOPF, MicrogridConfig,
                        OPFConfig, build_network, make_config, parallel_env, presets)
from mmgrid_env.evaluate import main as evaluate_main

PAPER_MG = presets["paper"].microgrids


def _zeros(env):
    return {a: np.zeros(4, np.float32) for a in env.agents}


# ---------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("opf, match", [
    ({"voll_eur_per_kwh": -10.0}, "voll_eur_per_kwh must be > 0"),
    ({"curtailment_cost_eur_per_kwh": -1.0}, "curtailment_cost_eur_per_kwh must be >= 0"),
    ({"balancing_kappa": float("nan")}, "balancing_kappa must be finite"),
    ({"v_max_pu": float("inf")}, "v_max_pu must be finite"),
    ({"voltage_penalty_eur_per_pu_h": 0.0}, "voltage_penalty_eur_per_pu_h must be > 0"),
    ({"current_limit_ka": float("nan")}, "current_limit_ka must be finite"),
    ({"loss_price_floor_eur_per_kwh": "0.02"}, "loss_price_floor_eur_per_kwh must be a number"),
])
def test_bad_opf_values_name_the_field(opf, match):
    with pytest.raises(ConfigError, match=match):
        make_config(opf=opf)


@pytest.mark.parametrize("overrides, match", [
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"alpha": float("nan")}, "alpha must be finite"),
    ({"dt_h": float("inf")}, "dt_h must be finite"),
    ({"dt_h": 0.5}, "dt_h must be 1.0"),
    ({"export_discount": 2.0}, "export_discount must be <= 1"),
    ({"obs_hour": 1}, "obs_hour must be True or False"),
    ({"microgrid_buses": [1, 2, 5, 24.7]}, r"microgrid_buses\[3\] must be an integer"),
    ({"microgrids": [{"bus": 1}]}, r"microgrids\[0\]: missing required field\(s\) \['pv_kwp'"),
    ({"microgrids": [{"bus": 1, "pv_kwp": 1, "wt_kw": 0, "load_peak_kw": 5, "colour": "red"}]},
     r"microgrids\[0\]: unknown field\(s\) \['colour'\]"),
    ({"microgrids": [3]}, r"microgrids\[0\] must be a MicrogridConfig or a dict"),
])
def test_bad_env_values_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**overrides)


def test_microgrids_as_dicts_are_accepted():
    env = parallel_env(microgrids=[{"bus": 17, "pv_kwp": 300.0, "wt_kw": 0.0, "load_peak_kw": 200.0},
                                   {"bus": 32, "pv_kwp": 0.0, "wt_kw": 300.0, "load_peak_kw": 250.0}])
    assert env.config.microgrids[1] == MicrogridConfig(bus=32, pv_kwp=0.0, wt_kw=300.0, load_peak_kw=250.0)


# Every numeric field of the config: values a user might type, including the wrong ones.
_ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-2.0, max_value=2.0),
    st.integers(min_value=-5, max_value=1000),
    st.sampled_from(["1", None, True]),
)
_MG_FIELDS = [f.name for f in dataclasses.fields(MicrogridConfig) if f.name != "bus"]
_OPF_FIELDS = [f.name for f in dataclasses.fields(OPFConfig)
               if f.name not in ("topology", "impedance_aggregation", "solver", "fallback_solver")]
_ENV_FIELDS = ["alpha", "beta", "export_discount", "price_scale_eur_per_kwh", "dt_h"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(["mg", "opf", "env"]), data=st.data(), value=_ANY_VALUE)
def test_any_config_value_is_accepted_and_finite_or_rejected_by_name(where, data, value):
    """Property: a config value is either rejected with a ConfigError naming the field, or accepted, and then an
    hour of the env (random actions) gives finite rewards and a closed network balance."""
    if where == "mg":
        name = data.draw(st.sampled_from(_MG_FIELDS))
        mgs = list(PAPER_MG)
        mgs[2] = dataclasses.replace(mgs[2], **{name: value})
        kwargs = {"microgrids": mgs}
    elif where == "opf":
        name = data.draw(st.sampled_from(_OPF_FIELDS))
        kwargs = {"opf": {name: value}}
    else:
        name = data.draw(st.sampled_from(_ENV_FIELDS))
        kwargs = {name: value}
    try:
        env = parallel_env(**kwargs)
    except ConfigError as exc:
        assert name in str(exc), (name, value, str(exc))
        return
    rng = np.random.default_rng(0)
    env.reset(seed=1, options={"day": 100})
    for _ in range(3):
        _, rew, _, _, infos = env.step({a: rng.uniform(-1.2, 1.2, 4) for a in env.agents})
        assert all(math.isfinite(r) for r in rew.values())
        assert all(math.isfinite(v) for info in infos.values() for v in info.values())


# ---------------------------------------------------------------------------------------------- reset and actions
def test_reset_day_must_be_an_integer():
    env = parallel_env()
    for bad in (3.7, "3", 3.0, True):
        with pytest.raises(ValueError, match="options\\['day'\\] must be an integer"):
            env.reset(options={"day": bad})
    env.reset(options={"day": np.int64(3)})
    assert env.day == 3
    with pytest.raises(ValueError, match="options\\['soc'\\]"):
        env.reset(options={"soc": ["a", "b", "c", "d"]})


def test_string_actions_are_named_as_such():
    env = parallel_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action of mg_1 must be 4 real numbers"):
        env.step({**_zeros(env), "mg_1": ["0", "0", "0", "0"]})
    with pytest.raises(ValueError, match="action of mg_0 must be 4 real numbers"):
        env.step({**_zeros(env), "mg_0": "0000"})


@settings(max_examples=60, deadline=None)
@given(action=st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6),
    st.lists(st.integers(-3, 3), min_size=4, max_size=4),
    st.lists(st.text(max_size=2), min_size=4, max_size=4),
    st.floats(), st.none(), st.text(max_size=4),
))
def test_any_action_is_accepted_with_finite_results_or_rejected_clearly(action):
    env = parallel_env()
    env.reset(seed=0)
    try:
        _, rew, _, _, infos = env.step({**_zeros(env), "mg_2": action})
    except ValueError as exc:
        assert "mg_2" in str(exc) or "shape (4,)" in str(exc), str(exc)
        return
    assert all(math.isfinite(r) for r in rew.values())
    assert infos["mg_2"]["actions_clipped"] == sum(abs(float(a)) > 1 for a in action)


# ---------------------------------------------------------------------------------------------- returned arrays
def test_observations_are_owned_by_the_caller():
    env = parallel_env()
    obs, _ = env.reset(seed=0)
    state = env.state().copy()
    obs["mg_0"] *= 0
    assert np.array_equal(env.state(), state)
    obs, *_ = env.step(_zeros(env))
    state = env.state().copy()
    obs["mg_3"][:] = 7
    assert np.array_equal(env.state(), state)


# ---------------------------------------------------------------------------------------------- OPF entrance
def _opf(**limits):
    lim = {"grid_p_min_kw": [-300.0] * 4, "grid_p_max_kw": [300.0] * 4, "grid_q_min_kvar": [-200.0] * 4,
           "grid_q_max_kvar": [200.0] * 4}
    lim.update(limits)
    return ConicOPF(build_network([1, 2, 5, 24]), OPFConfig(), **lim)


def test_opf_rejects_non_finite_inputs_and_inconsistent_limits():
    opf = _opf()
    with pytest.raises(ValueError, match=r"p_kw\[1\] is nan"):
        opf.solve([10.0, float("nan"), 0.0, 0.0], [0.0] * 4, 0.1)
    with pytest.raises(ValueError, match="price_eur_per_kwh"):
        opf.solve([0.0] * 4, [0.0] * 4, float("inf"))
    with pytest.raises(ValueError, match=r"q_grid_kvar\[3\]"):
        opf.solve([0.0] * 4, [0.0] * 4, 0.1, None, [0.0, 0.0, 0.0, -float("inf")])
    with pytest.raises(ValueError, match="microgrid 2: grid_p_min_kw 500.0 > grid_p_max_kw 300.0"):
        _opf(grid_p_min_kw=[-300.0, -300.0, 500.0, -300.0])
    with pytest.raises(ValueError, match="grid_q_max_kvar of microgrid 0 is not finite"):
        _opf(grid_q_max_kvar=[np.inf, 200.0, 200.0, 200.0])


# ---------------------------------------------------------------------------------------------- solver faults
def test_solver_constructor_error_falls_back_and_is_reported(monkeypatch):
    import clarabel

    def broken(*args, **kwargs):
        raise RuntimeError("injected constructor failure")

    monkeypatch.setattr(clarabel, "DefaultSolver", broken)
    env = parallel_env()
    env.reset(seed=0)
    _, rew, _, _, infos = env.step(_zeros(env))
    assert infos["mg_0"]["opf_status"] == STATUS_FALLBACK_SOLVER
    assert "injected constructor failure" in " ".join(env.last_step["opf"].errors)
    assert all(math.isfinite(r) for r in rew.values())


# ---------------------------------------------------------------------------------------------- determinism
def test_replay_in_the_same_instance_is_bit_identical():
    """The persistent solver is built from the configuration, not from the first step: a replay of the same seed
    and actions gives the same infos, bit for bit, on every step (the first included)."""
    env = parallel_env()
    rng = np.random.default_rng(3)
    actions = [{a: rng.uniform(-1, 1, 4).astype(np.float32) for a in env.possible_agents} for _ in range(24)]

    def run():
        env.reset(seed=5)
        return [env.step(act)[4] for act in actions]

    first, second = run(), run()
    assert first == second
    fresh = parallel_env()
    fresh.reset(seed=5)
    assert [fresh.step(act)[4] for act in actions] == first


def test_env_pickles_before_and_after_stepping():
    env = parallel_env()
    pickle.dumps(env)
    env.reset(seed=0)
    env.step(_zeros(env))
    clone = pickle.loads(pickle.dumps(env))
    act = {a: np.full(4, 0.4, np.float32) for a in env.agents}
    assert env.step(act)[4] == clone.step(act)[4]
    assert env.last_step["opf"].status_code == STATUS_OPTIMAL


def test_raw_env_is_the_bare_aec_env():
    from pettingzoo import AECEnv
    from pettingzoo.utils.wrappers import OrderEnforcingWrapper

    raw = mmgrid_env.raw_env()
    assert isinstance(raw, AECEnv) and not isinstance(raw, OrderEnforcingWrapper)
    assert isinstance(mmgrid_env.env(), OrderEnforcingWrapper)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv, match", [
    (["--days", "999"], "day 999 is out of range"),
    (["--preset", "papr"], "invalid choice: 'papr'"),
])
def test_cli_errors_are_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_main(argv + ["--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
