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
