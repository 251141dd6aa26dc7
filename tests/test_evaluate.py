"""Evaluation harness, reference policies, comparison tables, CLI and plots."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import mmgrid_env
from mmgrid_env import MultiMicrogridEnv, compare_table, evaluate
from mmgrid_env.evaluate import ROW_COLUMNS, EvaluationResult, main

from mmgrid_env.policies import RandomPolicy, RuleBasedPolicy, ZeroPolicy, make_policy

DAYS = [4, 104, 309]


@pytest.fixture(scope="module")
def env():
    return MultiMicrogridEnv("paper")


@pytest.fixture(scope="module")
def rb_result():
    return evaluate(RuleBasedPolicy("paper"), days=DAYS, oracle=True, progress=False, record=[104])


def test_totals_equal_the_env_per_step_costs(env, rb_result):
    """The harness's per-day numbers are the sums of the env's own per-step infos (stepped here by hand)."""
    pol = RuleBasedPolicy(env)
    for row in rb_result.rows:
        obs, _ = env.reset(options={"day": row["day"]})
        pol.reset()
        tot = dict.fromkeys(("cost", "team", "upper", "grid", "mt", "ess", "cons", "shed"), 0.0)
        while env.agents:
            obs, _, _, _, infos = env.step(pol(obs))
            s = infos["mg_0"]
            tot["cost"] += s["cost_total_eur"]
            tot["team"] += s["team_reward"]
            tot["upper"] += s["cost_upper_eur"]
            for a in env.possible_agents:
                tot["grid"] += infos[a]["cost_grid_eur"]
                tot["mt"] += infos[a]["cost_mt_eur"]
                tot["ess"] += infos[a]["cost_ess_eur"]
                tot["cons"] += infos[a]["soc_violation"]
                tot["shed"] += infos[a]["shedding_kw"]
        assert row["cost_eur"] == pytest.approx(tot["cost"], rel=1e-9)
        assert row["team_return"] == pytest.approx(tot["team"], rel=1e-9)
        assert row["objective_eur"] == pytest.approx(-tot["team"], rel=1e-9)
        assert row["cost_upper_eur"] == pytest.approx(tot["upper"], rel=1e-9, abs=1e-9)
        assert row["cost_grid_eur"] == pytest.approx(tot["grid"], rel=1e-9)
        assert row["cost_mt_eur"] == pytest.approx(tot["mt"], rel=1e-9)
        assert row["soc_penalty_eur"] == pytest.approx(env.config.beta * tot["cons"], abs=1e-9)
        assert row["shedding_kwh"] == pytest.approx(tot["shed"], abs=1e-9)
        # the components add up
        assert row["cost_eur"] == pytest.approx(row["cost_grid_eur"] + row["cost_mt_eur"] + row["cost_ess_eur"]
                                                + row["cost_upper_eur"], rel=1e-9)
        assert row["cost_upper_eur"] == pytest.approx(row["loss_cost_eur"] + row["balancing_eur"]
                                                      + row["voltage_penalty_eur"], rel=1e-6, abs=1e-6)
        assert row["objective_eur"] == pytest.approx(row["cost_eur"] + row["soc_penalty_eur"], rel=1e-9)


def test_optimality_gap_and_summary(rb_result):
    assert rb_result.days == DAYS and rb_result.split == "custom"
    for row in rb_result.rows:
        assert set(row) == set(ROW_COLUMNS)
        o = row["oracle_objective_eur"]
        assert np.isfinite(o) and row["objective_eur"] >= o - 1e-6 * abs(o)  # the oracle is a lower bound
        assert row["optimality_gap"] == pytest.approx((row["objective_eur"] - o) / abs(o))
        assert 0.0 <= row["optimality_gap"] < 1.0  # day 104 (negative prices, a cheap day): 56 % in env v1
        assert row["relaxation_gap_max_pu"] <= 1e-6 and row["opf_fallback_steps"] == 0
    s = rb_result.summary()
    assert s["n_days"] == 3
    assert s["objective_eur"] == pytest.approx(np.mean(rb_result.column("objective_eur")))
    assert s["optimality_gap"] == pytest.approx(np.mean(rb_result.column("optimality_gap")))
    text = rb_result.table()
    assert "mean" in text and "2024-01-05" in text


def test_rule_based_beats_zero_action():
    """On a spread of test days (every 9th), the rules are cheaper than the mid-range action on average."""
    days = list(MultiMicrogridEnv("paper").dataset.test_days[::9])
    rb = evaluate(RuleBasedPolicy("paper"), days=days, progress=False)
    zero = evaluate(ZeroPolicy("paper"), days=days, progress=False)
    rnd = evaluate(RandomPolicy("paper", seed=0), days=days, progress=False)
    assert rb.summary()["objective_eur"] < 0.9 * zero.summary()["objective_eur"]
    assert rb.summary()["objective_eur"] < rnd.summary()["objective_eur"]
    # the rules are better on most single days too, and never shed load
    assert np.mean(rb.column("objective_eur") < zero.column("objective_eur")) >= 0.75
    assert np.all(rb.column("shedding_kwh") < 1e-2)  # solver round-off only


def test_zero_and_random_policies(env):
    obs, _ = env.reset(options={"day": 4})
    z = ZeroPolicy(env)(obs)
    _, _, _, _, infos = env.step(z)
    f = env.fleet
    for i, a in enumerate(env.possible_agents):  # the middle of every range
        assert infos[a]["p_mt_kw"] == pytest.approx((f.mt_min_kw[i] + f.mt_max_kw[i]) / 2)
        assert infos[a]["p_grid_kw"] == pytest.approx(0.0, abs=1e-9)
        assert infos[a]["p_ess_kw"] == pytest.approx(0.0, abs=1e-9)
    r1, r2 = RandomPolicy(env, seed=3), RandomPolicy(env, seed=3)
    a1, a2 = r1(obs), r2(obs)
    for a in env.possible_agents:
        np.testing.assert_array_equal(a1[a], a2[a])
        assert a1[a].dtype == np.float32 and np.all(np.abs(a1[a]) <= 1)
    assert not np.array_equal(RandomPolicy(env, seed=4)(obs)["mg_0"], a1["mg_0"])
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", env)


def test_rule_based_policy_uses_only_observations_and_respects_soc_limits():
    """A whole test day: the rules keep every battery inside its soft SoC band (no penalty) and their set-points
    inside the ranges (no clipping)."""
    res = evaluate(RuleBasedPolicy("paper"), days=[184, 309], progress=False, record=True)
    assert np.all(res.column("soc_violation_rate") == 0)
    for traj in res.trajectories.values():
        assert len(traj["steps"]) == 24
        assert all(inf[a]["actions_clipped"] == 0 for inf in traj["steps"] for a in inf)
        assert all(inf[a]["p_ess_clipped_kw"] == pytest.approx(0, abs=1e-6) for inf in traj["steps"] for a in inf)


def test_soc_violation_rate_counts_agent_steps():
    class AlwaysCharge:
        def __call__(self, obs):
            return {a: np.array([-1, -1, 1, 0], np.float32) for a in obs}  # MT off, charge at max, buy max

    res = evaluate(AlwaysCharge(), days=[4], progress=False, record=True)
    steps = res.trajectories[4]["steps"]
    viol = np.array([[inf[a]["soc_violation"] for a in inf] for inf in steps])
    row = res.rows[0]
    assert row["soc_violation_rate"] == pytest.approx(np.mean(viol > 1e-6))
    assert 0.2 < row["soc_violation_rate"] < 1.0
    assert row["soc_penalty_eur"] == pytest.approx(50.0 * viol.sum())


def test_outputs_csv_json_and_compare_table(tmp_path, rb_result):
    rb_result.to_csv(tmp_path / "rb.csv")
    rb_result.to_json(tmp_path / "rb.json")
    with open(tmp_path / "rb.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and list(rows[0]) == list(ROW_COLUMNS)
    assert float(rows[1]["cost_eur"]) == pytest.approx(rb_result.rows[1]["cost_eur"])
    with open(tmp_path / "rb.json") as f:
        d = json.load(f)
    assert d["summary"]["n_days"] == 3
    back = EvaluationResult.from_json(tmp_path / "rb.json")
    assert back.summary()["objective_eur"] == pytest.approx(rb_result.summary()["objective_eur"])
    zero = evaluate("zero", days=DAYS, progress=False)  # by name, from the baselines package
    orc = evaluate("oracle", days=DAYS, progress=False)  # the oracle's dispatch replayed through the env
    with pytest.warns(UserWarning, match="common day"):
        table = compare_table({"rule_based": rb_result, "zero": zero, "oracle": orc,
                               "from_json": str(tmp_path / "rb.json"), "short": zero.subset([4, 104])})
    lines = table.splitlines()
    assert lines[0].startswith("| policy |") and len(lines) == 2 + 5
    zero_line = next(line for line in lines if line.startswith("| zero |"))
    cells = [c.strip() for c in zero_line.strip("|").split("|")]
    assert cells[1] == "2"  # common days only
    # zero has no oracle column of its own: its gap comes from the "oracle" row, and it is positive
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    gap = float(cells[header.index("optimality_gap")].rstrip(" %"))
    z2 = zero.subset([4, 104])
    o2 = orc.subset([4, 104])
    expect = np.mean((z2.column("objective_eur") - o2.column("objective_eur")) / np.abs(o2.column("objective_eur")))
    assert gap == pytest.approx(100 * expect, abs=0.01)
    assert "—" not in [c for h, c in zip(header, cells) if h != "normalised_score"]  # no score without oracle=True
    # the oracle's own account (no env run) agrees with its replay through the env
    from mmgrid_env import make_config, solve_day

    own = EvaluationResult.from_oracle([solve_day(make_config("paper"), d) for d in DAYS], make_config("paper"))
    np.testing.assert_allclose(own.column("objective_eur"), orc.column("objective_eur"), rtol=1e-4)
    np.testing.assert_allclose(own.column("cost_grid_eur"), orc.column("cost_grid_eur"), rtol=1e-4, atol=0.01)
    text = compare_table([rb_result, zero], fmt="text", reference=None)
    assert "RuleBasedPolicy" in text and "zero" in text


def test_module_is_callable_and_exports():
    assert callable(mmgrid_env.evaluate) and mmgrid_env.evaluate.compare_table is compare_table
    res = mmgrid_env.evaluate(ZeroPolicy("paper"), days=[9], progress=False, name="z")
    assert res.name == "z" and res.rows[0]["date"] == "2024-01-10"
    with pytest.raises(ValueError, match="out of range"):
        evaluate(ZeroPolicy("paper"), days=[9999], progress=False)


def test_cli_writes_tables_and_plots(tmp_path, capsys):
    rc = main(["--policy", "zero", "rule_based", "--days", "4", "--oracle", "--out", str(tmp_path),
               "--plot-day", "4", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| rule_based |" in out and "| zero |" in out
    for name in ("zero.csv", "zero.json", "rule_based.csv", "rule_based.json", "comparison.md",
                 "rule_based_day004_dispatch.png", "rule_based_day004_soc.png", "rule_based_day004_upper.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert any(p.startswith("oracle_") for p in os.listdir(tmp_path / "oracle_cache"))


def test_plots_from_a_plain_list_of_infos(tmp_path, rb_result):
    from mmgrid_env.plotting import plot_dispatch, plot_soc, plot_upper_layer, trajectory_arrays

    traj = rb_result.trajectories[104]
    arrays = trajectory_arrays(traj["steps"])
    assert arrays["p_mt_kw"].shape == (24, 4) and arrays["price_eur_per_kwh"].shape == (24,)
    fig = plot_dispatch(traj["steps"], tmp_path / "d.png")
    assert len(fig.axes) >= 4 and (tmp_path / "d.png").stat().st_size > 10_000
    plot_soc(traj, tmp_path / "s.png")
    plot_upper_layer(traj, tmp_path / "u.png")
    assert (tmp_path / "s.png").exists() and (tmp_path / "u.png").exists()


def test_rule_based_day_ahead_reference_window():
    """reference="day_ahead": the 24-hour reference window is the last 23 − k observed prices, the current one and
    the k forecast prices of the observation; a cheap hour before a forecast peak is a charging hour for it but
    not for the past-only rule (which has seen only that price)."""
    cfg = mmgrid_env.make_config("paper_day_ahead")
    k = cfg.obs_price_forecast
    with pytest.raises(ValueError, match="obs_price_forecast"):
        RuleBasedPolicy("paper", reference="day_ahead")
    with pytest.raises(ValueError, match="reference"):
        RuleBasedPolicy(cfg, reference="tomorrow")
    n = len(cfg.microgrids)
    obs = np.zeros((n, 5 + k + 2))
    obs[:, 2], obs[:, 4] = 0.5, 0.5  # half load, half-full batteries
    obs[:, 3] = 0.5  # 0.05 €/kWh now
    obs[:, 5:5 + k] = 1.5  # 0.15 €/kWh in each of the next k hours
    ahead = RuleBasedPolicy(cfg, reference="day_ahead").setpoints(obs)
    past = RuleBasedPolicy(cfg).setpoints(obs)
    # ref = (0.05 + k·0.15)/(k + 1) = 0.1417 €/kWh: 0.05 < 0.8·ref → charge at full power
    np.testing.assert_allclose(ahead[:, 1], -np.array([m.ess_charge_max_kw for m in cfg.microgrids]))
    assert np.all(past[:, 1] <= 0) and np.all(past[:, 1] > ahead[:, 1])  # no full charge without the forecast
    pol = RuleBasedPolicy(cfg, reference="day_ahead")
    for j in range(30):  # the window keeps 24 − k past prices
        o = obs.copy()
        o[:, 3] = j / 10
        pol.setpoints(o)
    assert list(pol._prices) == pytest.approx([j / 10 * cfg.price_scale_eur_per_kwh for j in range(30 - (24 - k), 30)])


def test_feeder_columns_summarise_the_infos():
    """shared_kwh, loss_kwh, voltage_limit_hours and the day's voltage extremes are what the recorded infos say."""
    from mmgrid_env.evaluate import VOLTAGE_LIMIT_TOL_PU

    res = evaluate("zero", days=[14], config="feeder", record=True, progress=False)
    row, steps = res.rows[0], res.trajectories[14]["steps"]
    sysd = [s["mg_0"] for s in steps]
    assert row["shared_kwh"] == pytest.approx(sum(max(s[a]["shared_kw"], 0.0) for s in steps for a in s))
    assert row["shared_kwh"] == pytest.approx(-sum(min(s[a]["shared_kw"], 0.0) for s in steps for a in s), abs=1e-6)
    assert row["loss_kwh"] == pytest.approx(sum(d["loss_kw"] for d in sysd)) and row["loss_kwh"] > 0
    assert row["v_min_pu"] == min(d["v_min_pu"] for d in sysd) and row["v_max_pu"] == max(d["v_max_pu"] for d in sysd)
    at_limit = [d["v_min_pu"] <= 0.95 + VOLTAGE_LIMIT_TOL_PU or d["v_max_pu"] >= 1.05 - VOLTAGE_LIMIT_TOL_PU
                for d in sysd]
    assert row["voltage_limit_hours"] == sum(at_limit)
    assert 0.9 < row["v_min_pu"] <= row["v_max_pu"] < 1.1
