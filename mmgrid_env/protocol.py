"""The benchmark protocol: normalised scores, aggregates with confidence intervals, and run records.

**Normalised score** of a policy on a day: ``(J_random − J) / (J_random − J_oracle)``, J the day's objective
(``objective_eur``: the € cost plus the SoC penalty). 0 is the random policy (uniform actions, seeded per day), 1
the perfect-foresight oracle; above 1 is impossible up to the oracle's replay error. Unlike the € cost, whose scale
differs from day to day (a 10 € loss is 1 % of a winter day and 20 % of a negative-price day), every day weighs
the same.

**Aggregates** over days and seeds (:func:`aggregate`): the mean, the median and the interquartile mean (IQM: the
mean of the middle 50 % of all (seed, day) scores, robust to a few extreme days) with 95 % confidence intervals
from rliable's stratified bootstrap (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"). Both
levels are sampled: the **days** (a sample of the weather and prices a policy will meet; resampled together for
all seeds, since a hard day is hard for every seed) and the **seeds** within each day; with one seed that is a
plain bootstrap over days.

**Run records** (:func:`run_record`, :func:`write_run_record`): one JSON per evaluated policy with everything
needed to trace a number: package and env version, git revision, the full config, the policy and its
hyper-parameters, seed, split, per-day rows and the aggregates. :func:`results_table` rebuilds a table from
records (``python -m mmgrid_env.protocol records/*.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .policies import RANDOM_DAY_SEED

__all__ = ["normalised_score", "random_reference", "aggregate", "run_record", "write_run_record",
           "read_run_record", "results_table", "subset", "aggregates_of", "report", "compare", "comparison_table",
           "RANDOM_REFERENCE_SEED", "RECORD_FORMAT", "main"]

RANDOM_REFERENCE_SEED = RANDOM_DAY_SEED
"""The random reference of day k is ``RandomPolicy(seed=0)`` bound to the env: ``default_rng(RANDOM_REFERENCE_SEED
+ k)``, so a day's reference does not depend on which other days are evaluated; ``evaluate("random", seed=0)``
plays exactly these actions."""
RECORD_FORMAT = "mmgrid-run-record/1"


def normalised_score(objective_eur: float, oracle_objective_eur: float, random_objective_eur: float) -> float:
    """(J_random − J) / (J_random − J_oracle): 0 = random, 1 = oracle; NaN when the two references coincide."""
    span = random_objective_eur - oracle_objective_eur
    if not (math.isfinite(span) and span > 0.0):
        return float("nan")
    return (random_objective_eur - objective_eur) / span


_RANDOM_MEMO: dict[tuple[str, int], float] = {}


def random_reference(config, days: Sequence[int], cache_dir: str | os.PathLike | None = None,
                     **env_overrides: Any) -> dict[int, float]:
    """The random policy's objective (€) on each day, memoised in the process and cached in ``cache_dir``
    (``random_<config-hash>.json``) if given: ``RandomPolicy(seed=0)`` bound to the env (day k's actions from
    ``default_rng(RANDOM_REFERENCE_SEED + k)``), what ``evaluate("random", seed=0)`` plays."""
    from .env import MultiMicrogridEnv
    from .evaluate import run_day
    from .oracle import config_hash
    from .policies import RandomPolicy

    env = MultiMicrogridEnv(config, **env_overrides)
    key = config_hash(env.config)
    path = None if cache_dir is None else os.path.join(os.fspath(cache_dir), f"random_{key}.json")
    stored: dict[str, float] = {}
    if path is not None and os.path.exists(path):
        try:
            with open(path) as f:
                stored = {str(k): float(v) for k, v in dict(json.load(f)).items()}
        except (ValueError, TypeError, OSError) as exc:  # a damaged cache is recomputed, never trusted
            warnings.warn(f"random-reference cache {path} is unreadable ({exc}); recomputing it", stacklevel=2)
            stored = {}
    out, new = {}, False
    for d in (int(d) for d in days):
        if (key, d) not in _RANDOM_MEMO:
            if str(d) in stored:
                _RANDOM_MEMO[key, d] = float(stored[str(d)])
            else:
                policy = RandomPolicy(env, seed=0)
                policy.bind_env(env)
                row, _ = run_day(env, policy, d)
                _RANDOM_MEMO[key, d] = row["objective_eur"]
                new = True
        out[d] = _RANDOM_MEMO[key, d]
    if path is not None and new:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stored.update({str(d): v for d, v in out.items()})
        tmp = f"{path}.tmp{os.getpid()}"  # written whole, then renamed: a concurrent reader never sees half a file
        with open(tmp, "w") as f:
            json.dump(stored, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    return out


def aggregate(scores: Any, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean, median and IQM of ``scores`` (shape (n_seeds, n_days), or (n_days,) for one seed) with 95 %
    stratified-bootstrap confidence intervals (rliable with ``task_bootstrap``: the days are resampled, the same for
    every seed, and the seeds within each day). NaN scores are dropped by day (a day with a NaN on any seed leaves
    out). Deterministic for a given ``seed``."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError as exc:  # pragma: no cover - rliable is in the dev/baselines/protocol extras
        raise ImportError("aggregate() needs rliable: pip install 'mmgrid-env[protocol]'") from exc
    s = np.atleast_2d(np.asarray(scores, float))
    s = s[:, np.all(np.isfinite(s), axis=0)]
    if s.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "median": nan, "iqm": nan, "mean_ci_low": nan, "mean_ci_high": nan,
                "iqm_ci_low": nan, "iqm_ci_high": nan}

    def stats(x):  # x: (runs = seeds, tasks = days); the median over every (seed, day) score
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x), np.median(x)])

    # rliable 1.2's StratifiedBootstrap draws from NumPy's global generator (its random_state reaches only arch's
    # unused one): seed it for this call and restore it, so that the same scores give the same intervals
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():  # arch deprecates RandomState; rliable's API takes only that
            warnings.simplefilter("ignore", FutureWarning)
            point, ci = rly.get_interval_estimates({"p": s}, stats, reps=reps, task_bootstrap=True,
                                                   random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    (mean, iqm, median), lo, hi = point["p"], ci["p"][0], ci["p"][1]
    return {"n": int(s.size), "mean": float(mean), "median": float(median), "iqm": float(iqm),
            "mean_ci_low": float(lo[0]), "mean_ci_high": float(hi[0]), "iqm_ci_low": float(lo[1]),
            "iqm_ci_high": float(hi[1])}


# ---------------------------------------------------------------------------------------------------- paired
def _day_matrix(record: Mapping, col: str) -> tuple[list[int], np.ndarray]:
    """The record's days and its (n_seeds, n_days) matrix of ``col`` (NaN where a row lacks it)."""
    days = [int(d) for d in record["days"]]
    pos = {d: j for j, d in enumerate(days)}
    m = np.full((len(record["runs"]), len(days)), np.nan)
    for i, run in enumerate(record["runs"]):
        for row in run["rows"]:
            v = row.get(col)
            if v is not None and int(row["day"]) in pos:
                m[i, pos[int(row["day"])]] = float(v)
    return days, m


def compare(record_a: Mapping, record_b: Mapping, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Policy a against policy b on the days both records cover, paired by day. The records must come from the
    same env version and agree on each common day's oracle and random objectives (the same problem).

    Returns ``n_days``, ``n_seeds_a``/``n_seeds_b``, and with ``_ci_low``/``_ci_high`` (95 %, percentile of a
    paired bootstrap: days resampled together for both, each policy's seeds resampled within each day):
    ``score_diff`` (mean over days of the seed-mean normalised score of a minus b; > 0: a is better),
    ``objective_diff_eur`` (the same for the € objective; < 0: a is cheaper) and ``prob_improvement`` (P(a > b):
    per day the share of (seed of a, seed of b) pairs where a scores higher, ties counting ½, averaged over days,
    as rliable's ``probability_of_improvement``). Days with a missing score in either record are left out.
    Deterministic for a given ``seed``."""
    if record_a.get("env_version") != record_b.get("env_version"):
        raise ValueError(f"compare: {record_a.get('policy')!r} and {record_b.get('policy')!r} come from different "
                         f"env versions ({record_a.get('env_version')} vs {record_b.get('env_version')})")
    if reps < 1:
        raise ValueError(f"compare: reps must be >= 1, got {reps}")
    days_a, score_a = _day_matrix(record_a, "normalised_score")
    days_b, score_b = _day_matrix(record_b, "normalised_score")
    _, obj_a = _day_matrix(record_a, "objective_eur")
    _, obj_b = _day_matrix(record_b, "objective_eur")
    pos_b = {d: j for j, d in enumerate(days_b)}
    ja = [j for j, d in enumerate(days_a) if d in pos_b]
    jb = [pos_b[days_a[j]] for j in ja]
    # the same problem on each day: the score's two references (oracle and random objectives) must agree, so a
    # record of another config (or another oracle) is refused rather than silently paired
    for col in ("oracle_objective_eur", "random_objective_eur"):
        ra, rb = _day_matrix(record_a, col)[1][0, ja], _day_matrix(record_b, col)[1][0, jb]
        bad = np.isfinite(ra) & np.isfinite(rb) & ~np.isclose(ra, rb, rtol=1e-6, atol=1e-6)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"compare: {record_a.get('policy')!r} and {record_b.get('policy')!r} disagree on day "
                             f"{days_a[ja[k]]}'s {col} ({ra[k]:.6g} vs {rb[k]:.6g}): not the same env config")
    sa, sb, oa, ob = score_a[:, ja], score_b[:, jb], obj_a[:, ja], obj_b[:, jb]
    keep = np.all(np.isfinite(sa), 0) & np.all(np.isfinite(sb), 0) & np.all(np.isfinite(oa), 0) & np.all(
        np.isfinite(ob), 0)
    sa, sb, oa, ob = sa[:, keep], sb[:, keep], oa[:, keep], ob[:, keep]
    n_days = sa.shape[1]
    if n_days == 0:
        raise ValueError(f"compare: {record_a.get('policy')!r} and {record_b.get('policy')!r} share no day with a "
                         "score")

    def stats(xa, xb, ya, yb):  # (..., seeds, days) → (...,) each
        win = (xa[..., :, None, :] > xb[..., None, :, :]) + 0.5 * (xa[..., :, None, :] == xb[..., None, :, :])
        return ((xa.mean(-2) - xb.mean(-2)).mean(-1), (ya.mean(-2) - yb.mean(-2)).mean(-1),
                win.mean(axis=(-3, -2)).mean(-1))

    point = stats(sa, sb, oa, ob)
    rng = np.random.default_rng(seed)
    day_idx = rng.integers(0, n_days, size=(reps, 1, n_days))  # the same days for both policies
    ia = rng.integers(0, sa.shape[0], size=(reps, sa.shape[0], n_days))  # seeds within each day
    ib = rng.integers(0, sb.shape[0], size=(reps, sb.shape[0], n_days))
    boot = stats(sa[ia, day_idx], sb[ib, day_idx], oa[ia, day_idx], ob[ib, day_idx])
    out: dict[str, Any] = {"policy_a": record_a.get("policy"), "policy_b": record_b.get("policy"),
                           "n_days": int(n_days), "n_seeds_a": int(sa.shape[0]), "n_seeds_b": int(sb.shape[0])}
    for name, p, b in zip(("score_diff", "objective_diff_eur", "prob_improvement"), point, boot):
        lo, hi = np.percentile(b, [2.5, 97.5])
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(p), float(lo), float(hi)
    return out


def comparison_table(records: Sequence[Mapping], against: Sequence[Mapping], split: str | None = None) -> str:
    """Markdown: each record of ``records`` against each of ``against`` (:func:`compare`), on ``split``'s days
    if given (:func:`subset`)."""
    header = ["policy", "against", "days × seeds", "score difference [95 % CI]", "€/day difference [95 % CI]",
              "P(better) [95 % CI]"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in records:
        for b in against:
            if a is b:
                continue
            # compare() reads the rows only: the subsets skip every bootstrap
            ra, rb = (a, b) if split is None else (subset(a, split, AGGREGATED_COLUMNS),
                                                   subset(b, split, AGGREGATED_COLUMNS))
            try:
                c = compare(ra, rb)
            except ValueError as exc:  # a page of many records still shows the pairs that can be made
                out.append(f"| {a.get('policy')} | {b.get('policy')} | not comparable: {exc} | | | |")
                continue
            out.append(f"| {c['policy_a']} | {c['policy_b']} | {c['n_days']} × {c['n_seeds_a']} | "
                       + " | ".join(_fmt_ci(c, k, d) for k, d in (("score_diff", 3), ("objective_diff_eur", 2),
                                                                  ("prob_improvement", 2))) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- records
def _git_revision() -> str | None:
    """The repository's commit (with ``-dirty`` if the tree has changes), when run from a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer, int, bool, str)) or x is None:
        return x.item() if isinstance(x, np.generic) else x
    return repr(x)


def run_record(results: Sequence, policy: str, hyperparameters: Mapping[str, Any] | None = None,
               notes: str = "") -> dict:
    """A run record of one policy: ``results`` are :class:`~mmgrid_env.evaluate.EvaluationResult` objects of the
    same policy, config and days, one per seed. Aggregates: cost, optimality gap, normalised score (mean, median,
    IQM with 95 % CIs) and the constraint costs, over days and seeds."""
    import mmgrid_env
    from .env import MultiMicrogridEnv

    results = list(results)
    if not results:
        raise ValueError("run_record needs at least one EvaluationResult")
    days = results[0].days
    if any(r.days != days for r in results):
        raise ValueError("run_record: every result (seed) must cover the same days")
    cfg = results[0].config
    record = {
        "format": RECORD_FORMAT, "policy": policy, "hyperparameters": _jsonable(dict(hyperparameters or {})),
        "package_version": mmgrid_env.__version__, "env_version": MultiMicrogridEnv.metadata["name"],
        "git_revision": _git_revision(), "config": _jsonable(cfg),
        "config_sha256": hashlib.sha256(json.dumps(_jsonable(cfg), sort_keys=True).encode()).hexdigest()[:16],
        "split": results[0].split, "days": list(days), "notes": notes,
        "runs": [{"seed": r.seed, "rows": _jsonable(r.rows)} for r in results],
    }
    record["aggregates"] = aggregates_of(record)
    return record


AGGREGATED_COLUMNS = ("normalised_score", "objective_eur", "optimality_gap", "soc_violation_rate", "shedding_kwh",
                      "spill_kwh", "voltage_penalty_eur", "relaxation_gap_max_pu")
"""Per-day columns a record aggregates (scores with IQM and CIs; the others' means and CIs)."""


def aggregates_of(record: Mapping, means_only: Sequence[str] = ()) -> dict[str, dict]:
    """The aggregates of a record's per-day rows (what :func:`run_record` stores), recomputed from the rows.
    Columns in ``means_only`` get only ``n`` and ``mean`` (the same mean as :func:`aggregate`'s, without the
    bootstrap: what a table that prints no interval for them needs)."""
    out = {}
    for col in AGGREGATED_COLUMNS:
        m = np.array([[np.nan if row.get(col) is None else row[col] for row in run["rows"]]
                      for run in record["runs"]], float)
        if np.all(np.isnan(m)):
            continue
        if col in means_only:
            m = m[:, np.all(np.isfinite(m), axis=0)]  # as aggregate(): a day with a NaN on any seed is left out
            out[col] = {"n": int(m.size), "mean": float(np.mean(np.mean(m, axis=0))) if m.size else float("nan")}
        else:
            out[col] = aggregate(m)
    return out


def write_run_record(record: Mapping, path: str | os.PathLike) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, separators=(",", ":"))  # compact: records are committed with the tables they back
        f.write("\n")


def read_run_record(path: str | os.PathLike) -> dict:
    with open(path) as f:
        record = json.load(f)
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a run record of format {RECORD_FORMAT!r}")
    return record


def _fmt_ci(agg: Mapping | None, key: str, digits: int, pct: bool = False) -> str:
    if not agg or agg.get(key) is None or not math.isfinite(agg[key]):
        return "–"
    k = 100.0 if pct else 1.0
    unit = " %" if pct else ""
    lo, hi = agg.get(f"{key}_ci_low"), agg.get(f"{key}_ci_high")
    point = f"{k * agg[key]:.{digits}f}"
    if lo is None or hi is None:
        return point + unit
    return f"{point} [{k * lo:.{digits}f}, {k * hi:.{digits}f}]{unit}"


def subset(record: Mapping, split: str, means_only: Sequence[str] = ()) -> dict:
    """The record restricted to the days of ``split`` (e.g. a stress split of a test-split record), with its
    aggregates recomputed (those of ``means_only``: the mean only, :func:`aggregates_of`): every day of the split
    must be in the record."""
    from .data import load_dataset

    dataset = record["config"].get("dataset", "smard_lu_2024")
    want = [int(d) for d in load_dataset(dataset).split_days(split)]
    missing = sorted(set(want) - set(record["days"]))
    if missing:
        raise ValueError(f"record of split {record['split']!r} lacks {len(missing)} day(s) of {split!r}, e.g. "
                         f"{missing[:3]}")
    keep = set(want)
    out = dict(record, split=split, days=[d for d in record["days"] if d in keep])
    out["runs"] = [dict(run, rows=[row for row in run["rows"] if int(row["day"]) in keep]) for run in record["runs"]]
    out["aggregates"] = aggregates_of(out, means_only)
    return out


_TABLE_MEANS_ONLY = ("optimality_gap", "soc_violation_rate", "shedding_kwh", "spill_kwh", "voltage_penalty_eur",
                     "relaxation_gap_max_pu")
"""Columns :func:`results_table` prints without an interval (so a split's table skips their bootstraps)."""


def results_table(records: Iterable[Mapping], fmt: str = "markdown", split: str | None = None) -> str:
    """One row per record: normalised score (IQM and mean, 95 % CI), objective (mean, 95 % CI), optimality gap,
    and the constraint costs, over days and seeds. Every number comes from the records' per-day rows; with
    ``split``, from the rows of that split's days (:func:`subset`)."""
    header = ["policy", "env", "split", "days × seeds", "score IQM [95 % CI]", "score mean [95 % CI]",
              "objective €/day [95 % CI]", "gap", "SoC viol.", "shed kWh/day", "spill kWh/day", "record"]
    lines = []
    for r in records:
        if split is not None and r["split"] != split:
            r = dict(subset(r, split, means_only=_TABLE_MEANS_ONLY), _path=r.get("_path", ""))
        a = r.get("aggregates") or aggregates_of(r)
        n_seeds = len(r["runs"])
        lines.append([r["policy"], r["env_version"], r["split"], f"{len(r['days'])} × {n_seeds}",
                      _fmt_ci(a.get("normalised_score"), "iqm", 3), _fmt_ci(a.get("normalised_score"), "mean", 3),
                      _fmt_ci(a.get("objective_eur"), "mean", 2),
                      _fmt_ci({"mean": a.get("optimality_gap", {}).get("mean")}, "mean", 2, pct=True),
                      _fmt_ci({"mean": a.get("soc_violation_rate", {}).get("mean")}, "mean", 2, pct=True),
                      _fmt_ci({"mean": a.get("shedding_kwh", {}).get("mean")}, "mean", 2),
                      _fmt_ci({"mean": a.get("spill_kwh", {}).get("mean")}, "mean", 2),
                      r.get("_path", "")])
    if fmt == "markdown":
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *lines])


REFERENCE_POLICIES = ("oracle", "random", "zero")
"""Records that :func:`report` does not compare against the rule-based policies (the score's two anchors and the
do-nothing policy)."""


def report(root: str | os.PathLike) -> str:
    """A markdown page of every run record under ``root`` (``<root>/<preset>/<split>/*.record.json``): one table
    per preset and split (with every other learner paired against the rule-based policies, :func:`compare`), and for
    the test split one per stress split (:func:`subset`). This is how the tables of
    docs/results-v1.md are made: ``python -m mmgrid_env.protocol --report docs/records/v1 > docs/results-v1.md``."""
    from .data import STRESS_SPLITS

    root = os.fspath(root)
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.record.json"), recursive=True)):
        rec = read_run_record(path)
        rec["_path"] = os.path.relpath(path, os.path.dirname(os.path.abspath(root)))
        preset = os.path.basename(os.path.dirname(os.path.dirname(path)))
        groups.setdefault((preset, rec["split"]), []).append(rec)
    order = {"test": 0, "validation": 1, "train": 2}
    out = ["# Results from run records", "",
           f"Made by `python -m mmgrid_env.protocol --report {root}` from the run records there (one JSON per policy "
           "and split, with the env and package version, git revision, config, seed and every day's numbers). "
           "Score: normalised, 0 = random policy, 1 = oracle, per day; IQM = interquartile mean over all (seed, day) "
           "scores; 95 % confidence intervals by stratified bootstrap over days and seeds (rliable). Objective: € per day incl. "
           "the SoC penalty. Gap: mean optimality gap. SoC viol.: share of agent-steps outside the SoC band.", ""]
    for (preset, split) in sorted(groups, key=lambda k: (k[0], order.get(k[1], 9), k[1])):
        recs = groups[(preset, split)]
        out += [f"## Preset `{preset}`, split `{split}`", "", results_table(recs), ""]
        rules = [r for r in recs if str(r["policy"]).startswith("rule_based")]
        others = [r for r in recs if r["policy"] not in REFERENCE_POLICIES and id(r) not in {id(x) for x in rules}]
        if rules and others:
            out += [f"Paired against the rule-based policies on the same {split} days (score and € differences: "
                    "policy − rules; P(better): the chance that a seed of the policy scores higher than the rules "
                    "on a random day; 95 % CIs by a paired bootstrap over days and seeds):", "",
                    comparison_table(others, rules), ""]
        if split == "test":
            for stress, what in STRESS_SPLITS.items():
                try:
                    table = results_table(recs, split=stress)
                except ValueError:
                    continue
                n = len(subset(recs[0], stress, means_only=AGGREGATED_COLUMNS)["days"])
                out += [f"### Stress split `{stress}` ({n} days: {what})", "", table, ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmgrid_env.protocol RECORD.json ...``: the results table of run records (markdown);
    ``--report DIR``: the page of every record under DIR, with the stress splits; ``--compare A B``: record A
    paired against record B."""
    p = argparse.ArgumentParser(prog="python -m mmgrid_env.protocol", description=main.__doc__)
    p.add_argument("records", nargs="*", help="run record JSON files (globs allowed)")
    p.add_argument("--report", default=None, metavar="DIR", help="print the results page of every record under DIR")
    p.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"),
                   help="paired comparison of run record A against run record B on their common days")
    p.add_argument("--format", default="markdown", choices=["markdown", "text"])
    p.add_argument("--split", default=None, help="restrict each record to this split's days (e.g. a stress split "
                                                  "of test-split records)")
    args = p.parse_args(argv)
    if args.report is not None:
        try:
            print(report(args.report))
        except (OSError, ValueError) as exc:
            print(f"mmgrid-protocol: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.compare is not None:
        try:
            a, b = (read_run_record(path) for path in args.compare)
            if args.split is not None:
                a, b = subset(a, args.split, AGGREGATED_COLUMNS), subset(b, args.split, AGGREGATED_COLUMNS)
            print(comparison_table([a], [b]))
        except (OSError, ValueError) as exc:
            print(f"mmgrid-protocol: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.records:
        p.error("give run record files, --compare A B, or --report DIR")
    paths = sorted({q for pattern in args.records for q in (glob.glob(pattern) or [pattern])})
    records = []
    for path in paths:
        try:
            rec = read_run_record(path)
        except (OSError, ValueError) as exc:
            print(f"mmgrid-protocol: error: {exc}", file=sys.stderr)
            return 2
        rec["_path"] = os.path.relpath(path)
        records.append(rec)
    try:
        print(results_table(records, fmt=args.format, split=args.split))
    except ValueError as exc:
        print(f"mmgrid-protocol: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
