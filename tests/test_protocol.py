"""The benchmark protocol: splits, normalised score, aggregates (rliable), constraint costs, run records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmgrid_env import SafetyCosts, evaluate, load_dataset, parallel_env
from mmgrid_env.data import STRESS_SPLITS
from mmgrid_env.protocol import (aggregate, aggregates_of, main, normalised_score, read_run_record, results_table,
                                 run_record, write_run_record)
from mmgrid_env.wrappers import CONSTRAINT_KEYS

DAYS = [4, 104, 184]


def test_stress_splits_are_test_days_defined_from_the_data():
    ds = load_dataset()
    test = set(ds.test_days.tolist())
    for name in STRESS_SPLITS:
        days = ds.split_days(name)
        assert set(days.tolist()) <= test and len(days) > 0, name
    neg = ds.split_days("test_negative_price")
    assert all(ds.price_eur_per_kwh[d].min() < 0 for d in neg)
    assert not any(ds.price_eur_per_kwh[d].min() < 0 for d in test - set(neg.tolist()))
    high = ds.split_days("test_high_price")
    assert len(high) == 15  # the top fifth of 73
    cutoff = min(ds.price_eur_per_kwh[d].mean() for d in high)
    assert all(ds.price_eur_per_kwh[d].mean() <= cutoff for d in test - set(high.tolist()))
    e = parallel_env()
    with pytest.raises(ValueError, match="not a 'test_high_price' day"):
        e.reset(options={"split": "test_high_price", "day": int(sorted(test - set(high.tolist()))[0])})


def test_normalised_score_is_zero_for_random_and_one_for_the_oracle_on_every_day():
    rnd = evaluate("random", days=DAYS, oracle=True, progress=False)
    orc = evaluate("oracle", days=DAYS, oracle=True, progress=False)
    rb = evaluate("rule_based", days=DAYS, oracle=True, progress=False)
    assert rnd.column("normalised_score") == pytest.approx([0.0] * 3, abs=1e-12)
    assert orc.column("normalised_score") == pytest.approx([1.0] * 3, abs=1e-5)  # up to the replay error
    for row in rb.rows:  # by hand from the row's own three objectives
        want = (row["random_objective_eur"] - row["objective_eur"]) / (
            row["random_objective_eur"] - row["oracle_objective_eur"])
        assert row["normalised_score"] == pytest.approx(want, rel=1e-12)
        assert 0.0 < row["normalised_score"] < 1.0
    assert np.isnan(normalised_score(5.0, 3.0, 3.0))


def test_aggregate_against_hand_computed_values():
    scores = np.array([[0.0, 0.25, 0.5, 0.75, 1.0, 10.0, -10.0, 0.5]])  # one seed, 8 days
    a = aggregate(scores, reps=500)
    assert a["mean"] == pytest.approx(np.mean(scores))
    # IQM: the middle half of the 8 sorted values [-10, 0, .25, .5, .5, .75, 1, 10] → mean of [.25, .5, .5, .75]
    assert a["iqm"] == pytest.approx(0.5)
    assert a["median"] == pytest.approx(0.5)
    assert a["iqm_ci_low"] <= a["iqm"] <= a["iqm_ci_high"] and a["mean_ci_low"] < a["mean_ci_high"]
    assert aggregate(scores, reps=500) == a  # deterministic
    constant = aggregate(np.full((2, 5), 0.7), reps=200)
    assert constant["iqm_ci_low"] == pytest.approx(0.7) and constant["iqm_ci_high"] == pytest.approx(0.7)
    assert aggregate(np.array([[np.nan, 1.0, 2.0, 3.0]]), reps=200)["n"] == 3  # NaN days left out


def test_run_record_round_trips_and_rebuilds_its_table_row(tmp_path, capsys):
    res = [evaluate("rule_based", days=DAYS, oracle=True, progress=False, seed=s) for s in (0, 1)]
    rec = run_record(res, policy="rule_based", hyperparameters={"band": 0.2})
    assert rec["env_version"] == "mmgrid_v1" and rec["days"] == DAYS and len(rec["runs"]) == 2
    assert rec["aggregates"]["normalised_score"]["mean"] == pytest.approx(
        np.mean([r["normalised_score"] for run in res for r in run.rows]))
    path = tmp_path / "rb.record.json"
    write_run_record(rec, path)
    back = read_run_record(path)
    assert back["runs"][0]["rows"][1]["objective_eur"] == res[0].rows[1]["objective_eur"]  # exact, not rounded
    assert aggregates_of(back) == back["aggregates"] == json.loads(json.dumps(rec["aggregates"]))
    assert results_table([back]) == results_table([rec])
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "rule_based" in out and f"{rec['aggregates']['normalised_score']['iqm']:.3f}" in out
    (tmp_path / "bad.json").write_text("{}")
    assert main([str(tmp_path / "bad.json")]) == 2


def test_safety_costs_equal_the_infos_they_summarise():
    env = SafetyCosts(parallel_env(), mode="amount", weights={"shedding_kw": 2.0})
    ind = SafetyCosts(parallel_env())
    rng = np.random.default_rng(0)
    obs, infos = env.reset(seed=0, options={"day": 104})
    ind.reset(seed=0, options={"day": 104})
    n_cost = 0
    while env.agents:
        act = {a: rng.choice([-1.0, 1.0], 4).astype(np.float32) for a in env.agents}
        _, _, _, _, infos = env.step(act)
        _, _, _, _, infos_i = ind.step(act)
        for a, d in infos.items():
            want = sum((2.0 if k == "shedding_kw" else 1.0) * max(d[k], 0.0) for k in CONSTRAINT_KEYS)
            assert d["cost"] == pytest.approx(want, rel=1e-12)
            assert d["costs"] == {k: max(d[k], 0.0) for k in CONSTRAINT_KEYS}
            assert infos_i[a]["cost"] == float(any(v > 1e-6 for v in d["costs"].values()))
            n_cost += infos_i[a]["cost"]
    assert n_cost > 0  # limit-hitting actions do violate the SoC band
    with pytest.raises(ValueError, match="unknown constraint"):
        SafetyCosts(parallel_env(), weights={"comfort": 1.0})


def test_stress_split_tables_come_from_test_records_by_subsetting():
    from mmgrid_env.protocol import subset

    neg = [int(d) for d in load_dataset().split_days("test_negative_price")]
    res = evaluate("rule_based", days=neg + [9], oracle=True, progress=False)
    rec = run_record([res], policy="rule_based")
    sub = subset(rec, "test_negative_price")
    assert sub["days"] == neg and sub["split"] == "test_negative_price"
    assert sub["aggregates"]["objective_eur"]["mean"] == pytest.approx(
        np.mean([r["objective_eur"] for r in res.rows if r["day"] != 9]))
    with pytest.raises(ValueError, match="lacks .* day"):
        subset(rec, "test_high_price")


def test_means_only_aggregates_equal_the_bootstrapped_means():
    """A stress split's table skips the bootstraps of the columns it prints without an interval; their means must
    be aggregate()'s, NaN days dropped the same way (a day with a NaN on any seed leaves out)."""
    rng = np.random.default_rng(3)
    rec = _synthetic_record("p", rng.uniform(0.5, 1.0, (3, 12)))
    for i, run in enumerate(rec["runs"]):
        for j, row in enumerate(run["rows"]):
            row["optimality_gap"] = float("nan") if (i, j) == (1, 4) else float(rng.uniform(0, 0.2))
            row["shedding_kwh"] = float(rng.exponential(3.0))
    full = aggregates_of(rec)
    quick = aggregates_of(rec, means_only=("optimality_gap", "shedding_kwh"))
    for col in ("optimality_gap", "shedding_kwh"):
        assert set(quick[col]) == {"n", "mean"}
        assert quick[col]["n"] == full[col]["n"] and quick[col]["mean"] == pytest.approx(full[col]["mean"], rel=1e-12)
    assert full["optimality_gap"]["n"] == 3 * 11  # day 4 left out on every seed
    assert quick["normalised_score"] == full["normalised_score"]  # the others keep their intervals


def test_random_reference_cache_survives_a_damaged_file(tmp_path, monkeypatch):
    """Two evaluations sharing a cache folder once read a file another was writing (empty: a crash). The cache is
    now written whole and renamed; a damaged one is recomputed with a warning, and rewritten valid."""
    from mmgrid_env import protocol

    monkeypatch.setattr(protocol, "_RANDOM_MEMO", {})  # nothing from earlier tests: the file is written
    first = protocol.random_reference("paper", [4], cache_dir=tmp_path)
    (path,) = tmp_path.glob("random_*.json")
    assert json.loads(path.read_text()) == {"4": pytest.approx(first[4])}
    path.write_text("")  # what a reader saw mid-write
    protocol._RANDOM_MEMO.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        again = protocol.random_reference("paper", [4], cache_dir=tmp_path)
    assert again[4] == pytest.approx(first[4]) and json.loads(path.read_text()) == {"4": pytest.approx(first[4])}
    assert not list(tmp_path.glob("*.tmp*"))


def _synthetic_record(policy: str, scores, oracle=100.0, random_=1000.0, days=None) -> dict:
    """A run record whose rows carry the given (seeds, days) scores, objectives consistent with them."""
    scores = np.atleast_2d(np.asarray(scores, float))
    days = list(range(scores.shape[1])) if days is None else list(days)
    runs = [{"seed": i, "rows": [{"day": d, "normalised_score": float(x), "oracle_objective_eur": oracle,
                                  "random_objective_eur": random_,
                                  "objective_eur": random_ - float(x) * (random_ - oracle)}
                                 for d, x in zip(days, row)]} for i, row in enumerate(scores)]
    return {"format": "mmgrid-run-record/1", "policy": policy, "env_version": "mmgrid_v1", "days": days,
            "split": "test", "runs": runs}


def test_paired_comparison_against_hand_computed_values():
    from mmgrid_env.protocol import compare, comparison_table

    # the days differ a lot (0.2 … 0.9) but a beats b by exactly 0.01 on every day and seed: the difference is
    # certain, although the two policies' own CIs overlap
    day_level = np.linspace(0.2, 0.9, 30)
    b = _synthetic_record("b", day_level)
    a = _synthetic_record("a", np.stack([day_level + 0.01, day_level + 0.01]))
    c = compare(a, b, reps=300)
    assert (c["n_days"], c["n_seeds_a"], c["n_seeds_b"]) == (30, 2, 1)
    assert c["score_diff"] == pytest.approx(0.01) and c["score_diff_ci_low"] == pytest.approx(0.01)
    assert c["objective_diff_eur"] == pytest.approx(-9.0)  # 0.01 × (1000 − 100) € cheaper
    assert c["prob_improvement"] == 1.0 and c["prob_improvement_ci_low"] == 1.0
    agg_a, agg_b = aggregate(np.stack([day_level + 0.01] * 2), reps=300), aggregate(day_level, reps=300)
    assert agg_a["mean_ci_low"] < agg_b["mean_ci_high"]  # the unpaired intervals overlap
    # against itself: no difference, P = ½
    same = compare(b, b, reps=300)
    assert same["score_diff"] == 0.0 and same["prob_improvement"] == 0.5
    # by hand: 2 seeds of a on 2 days vs one seed of b; P per day = share of seeds above b (ties ½)
    a2, b2 = _synthetic_record("a", [[0.5, 0.2], [0.3, 0.2]]), _synthetic_record("b", [[0.4, 0.2]])
    c2 = compare(a2, b2, reps=300)
    assert c2["score_diff"] == pytest.approx(((0.4 - 0.4) + (0.2 - 0.2)) / 2)
    assert c2["prob_improvement"] == pytest.approx((0.5 + 0.5) / 2)  # day 0: one of two above; day 1: ties
    assert c2["score_diff_ci_low"] <= c2["score_diff"] <= c2["score_diff_ci_high"]
    assert compare(a2, b2, reps=300) == c2  # deterministic
    # only the common days count; a NaN day is left out
    a3 = _synthetic_record("a", [[0.9, np.nan, 0.5]], days=[3, 4, 5])
    b3 = _synthetic_record("b", [[0.1, 0.1, 0.1, 0.1]], days=[2, 3, 4, 5])
    assert compare(a3, b3, reps=100)["n_days"] == 2
    assert compare(a3, b3, reps=100)["score_diff"] == pytest.approx(((0.9 - 0.1) + (0.5 - 0.1)) / 2)
    assert "not comparable: compare: 'a' and 'b' share no day" in comparison_table([a3], [_synthetic_record("b", [[0.1]], days=[9])])
    table = comparison_table([a], [b])
    assert "| a | b | 30 × 2 | 0.010 [0.010, 0.010] | -9.00 [-9.00, -9.00] | 1.00 [1.00, 1.00] |" in table


def test_paired_comparison_refuses_records_of_different_problems():
    from mmgrid_env.protocol import compare

    a = _synthetic_record("a", [[0.5, 0.6]])
    with pytest.raises(ValueError, match="disagree on day 1's oracle_objective_eur"):
        other = _synthetic_record("b", [[0.5, 0.6]])
        other["runs"][0]["rows"][1]["oracle_objective_eur"] = 120.0
        compare(a, other)
    with pytest.raises(ValueError, match="different env versions"):
        compare(a, dict(_synthetic_record("b", [[0.5, 0.6]]), env_version="mmgrid_v0"))
    with pytest.raises(ValueError, match="share no day"):
        compare(a, _synthetic_record("b", [[0.5, 0.6]], days=[7, 8]))


def test_compare_on_the_command_line(tmp_path, capsys):
    a, b = _synthetic_record("a", [[0.6, 0.7, 0.8]]), _synthetic_record("b", [[0.5, 0.7, 0.9]])
    write_run_record(a, tmp_path / "a.record.json")
    write_run_record(b, tmp_path / "b.record.json")
    assert main(["--compare", str(tmp_path / "a.record.json"), str(tmp_path / "b.record.json")]) == 0
    out = capsys.readouterr().out
    assert "| a | b | 3 × 1 | 0.000 [" in out and "| 0.50 [" in out
    assert main(["--compare", str(tmp_path / "a.record.json"), str(tmp_path / "missing.json")]) == 2


def test_report_pairs_each_learner_with_the_rule_based_policies(tmp_path):
    from mmgrid_env.protocol import report

    folder = tmp_path / "v1" / "feeder" / "validation"
    for name, scores in {"rule_based": [[0.5, 0.6]], "oracle": [[1.0, 1.0]], "learner": [[0.6, 0.7], [0.5, 0.6]]}.items():
        write_run_record(dict(_synthetic_record(name, scores), split="validation"),
                         folder / f"{name}.record.json")
    page = report(tmp_path / "v1")
    assert "| learner | rule_based | 2 × 2 | 0.050 [" in page
    assert "| oracle | rule_based |" not in page and "| rule_based | rule_based |" not in page
