"""Evaluation harness: run a policy over whole days, tabulate costs, compare with the oracle.

A **policy** is any callable ``policy(observations: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (the
env's observation and action dicts). Optional hooks, used when present:

* ``policy.reset()`` — called at the start of every day (stateful policies);
* ``policy.bind_env(env)`` — called once with the harness's env before the first day (only benchmarks that
  must know the day use it, e.g. :class:`mmgrid_env.oracle.OraclePolicy`; a real policy sees observations only).

``mmgrid_env.evaluate`` is this module and is callable: ``mmgrid_env.evaluate(policy, ...)`` runs :func:`evaluate`.

Quick use::

    from mmgrid_env import evaluate, compare_table
    from mmgrid_env.policies import RuleBasedPolicy, ZeroPolicy
    rb = evaluate(RuleBasedPolicy(), split="test", oracle=True)     # 73 test days, with optimality gaps
    zero = evaluate(ZeroPolicy(), split="test")
    orc = evaluate("oracle", split="test")                          # the oracle's dispatch replayed in the env
    print(compare_table({"rule_based": rb, "zero": zero, "oracle": orc}))
    rb.to_csv("results/rule_based.csv"); rb.to_json("results/rule_based.json")

Command line (also the console script ``mmgrid-evaluate``)::

    python -m mmgrid_env.evaluate --policy rule_based zero random oracle --split test --oracle --out results/

**What is measured, per day** (the columns of :attr:`EvaluationResult.rows`; € summed over the 24 steps):

==========================  ==============================================================================
``objective_eur``           −(team return) = α·lower-layer € + upper-layer € + β·Σ cons(SoC): what the oracle
                            minimises and the basis of the optimality gap (= ``cost_eur + soc_penalty_eur``
                            for the default α = 1)
``cost_eur``                Σ of the env's ``cost_total_eur`` (lower + upper layer, € only)
``cost_grid_eur``           F_MG, trade with the main grid (negative = net revenue)
``cost_mt_eur``             F_MT, micro gas turbines (incl. the constant c every hour)
``cost_ess_eur``            F_ESS, battery throughput
``cost_upper_eur``          F_up, the OPF objective = loss + balancing + voltage penalty
``loss_cost_eur``           network losses × w_t
``balancing_eur``           ΔP/ΔQ balancing trades, curtailment, shedding, reactive slack (Σ microgrids)
``voltage_penalty_eur``     soft voltage-limit penalty
``soc_penalty_eur``         β·Σ cons(SoC_{t+1})
``curtailment_kwh``         energy curtailed by the OPF (Σ microgrids)
``shedding_kwh``            load shed by the OPF (Σ microgrids)
``spill_kwh``               surplus spilled at VOLL: beyond curtailment (generation only) and export headroom
``shared_kwh``              energy bought from neighbours through the feeder (Σ microgrids; = energy sold to them)
``loss_kwh``                network losses
``voltage_limit_hours``     steps in which some node's voltage is within 1e-4 p.u. of a voltage limit or beyond
``v_min_pu``, ``v_max_pu``  lowest / highest node voltage over the day's steps
``soc_violation_rate``      share of agent-steps whose SoC_{t+1} lies outside [soc_min, soc_max]
``relaxation_gap_mean_pu``  mean over steps of the OPF's relaxation gap (p.u.); ``..._max_pu`` the max
``opf_fallback_steps``      steps where the OPF needed its fallback solver or safe dispatch (status ≠ 0)
``team_return``             Σ of the team reward r_t
``oracle_objective_eur``    the oracle's optimum for the day (``oracle=True`` only)
``random_objective_eur``    the random policy's objective on the day (``oracle=True`` only; seeded per day)
``normalised_score``        (random − objective) / (random − oracle): 0 = random, 1 = oracle (``oracle=True``)
``optimality_gap``          (objective − oracle objective) / |oracle objective|  (``oracle=True`` only)
``wall_s``                  wall time of the day's 24 steps (policy + env)
==========================  ==============================================================================

The summary (:meth:`EvaluationResult.summary`) holds the mean of every numeric column over the days.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .config import EnvConfig, presets
from .data import SPLITS, STRESS_SPLITS, load_dataset
from .env import MultiMicrogridEnv

__all__ = ["evaluate", "EvaluationResult", "compare_table", "run_day", "ROW_COLUMNS", "main"]

ROW_COLUMNS = (
    "day", "date", "objective_eur", "cost_eur", "cost_grid_eur", "cost_mt_eur", "cost_ess_eur", "cost_upper_eur",
    "loss_cost_eur", "balancing_eur", "voltage_penalty_eur", "soc_penalty_eur", "curtailment_kwh", "shedding_kwh",
    "spill_kwh", "shared_kwh", "loss_kwh", "voltage_limit_hours", "v_min_pu", "v_max_pu", "soc_violation_rate", "relaxation_gap_mean_pu", "relaxation_gap_max_pu", "opf_fallback_steps",
    "team_return", "oracle_objective_eur", "oracle_cost_eur", "optimality_gap", "random_objective_eur",
    "normalised_score", "wall_s",
)
"""Columns of a per-day row, in order (the oracle columns are NaN without ``oracle=True``)."""

SOC_VIOLATION_TOL = 1e-6
"""cons(SoC) above this counts as a violation. Float round-off at a limit does not: actions are float32, so a
battery driven exactly to soc_max lands within ~1e-8 of it (1e-6 of SoC is 0.5 Wh on a 500 kWh battery)."""

VOLTAGE_LIMIT_TOL_PU = 1e-4
"""A step counts in ``voltage_limit_hours`` when some node's voltage is within this of a limit (or beyond it)."""

Policy = Callable[[dict], dict]


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class EvaluationResult:
    """Per-day rows and their summary for one policy.

    Attributes:
        name: a label (used by :func:`compare_table` when no name is given there).
        rows: one dict per day with the keys :data:`ROW_COLUMNS`.
        split: the split evaluated (``"custom"`` when ``days`` were given).
        seed: the seed passed to the first ``env.reset``.
        config: the env's :class:`EnvConfig`.
        trajectories: day → recorded trajectory (``record=...``): a dict with ``day``, ``date``, ``agents``,
            ``initial`` (the reset infos), ``steps`` (the 24 per-step infos ``{agent: info}``), ``soc_min``,
            ``soc_max`` — the input of :mod:`mmgrid_env.plotting`.
        wall_s: total wall time.
    """

    name: str
    rows: list
    split: str = "test"
    seed: int = 0
    config: Any = None
    trajectories: dict = field(default_factory=dict, repr=False)
    wall_s: float = 0.0

    # -- views
    @property
    def days(self) -> list[int]:
        return [int(r["day"]) for r in self.rows]

    def column(self, name: str) -> np.ndarray:
        """One column over the days, as a float array (``date`` as an object array)."""
        vals = [r.get(name, float("nan")) for r in self.rows]  # rows of older records may lack newer columns
        return np.array(vals, dtype=object if name == "date" else float)

    def summary(self) -> dict:
        """Means of every numeric column over the days, plus ``n_days`` (NaN where undefined)."""
        out: dict[str, Any] = {"name": self.name, "n_days": len(self.rows)}
        for c in ROW_COLUMNS:
            if c in ("day", "date"):
                continue
            a = self.column(c) if self.rows else np.array([])
            out[c] = float(np.mean(a)) if a.size and np.all(np.isfinite(a)) else (
                float(np.nanmean(a)) if a.size and np.any(np.isfinite(a)) else float("nan"))
        return out

    def subset(self, days: Iterable[int]) -> "EvaluationResult":
        """The same result restricted to ``days`` (in this result's order)."""
        keep = {int(d) for d in days}
        return dataclasses.replace(self, rows=[r for r in self.rows if int(r["day"]) in keep],
                                   trajectories={d: t for d, t in self.trajectories.items() if d in keep})

    # -- output
    def table(self, columns: Sequence[str] | None = None, summary: bool = True) -> str:
        """A plain-text table of the per-day rows (and the mean row)."""
        cols = list(columns or ("day", "date", "objective_eur", "cost_eur", "cost_grid_eur", "cost_mt_eur",
                                "cost_ess_eur", "cost_upper_eur", "soc_penalty_eur", "shedding_kwh",
                                "soc_violation_rate", "optimality_gap"))
        lines = [list(cols)]
        for r in self.rows:
            lines.append([_fmt(r[c], c) for c in cols])
        if summary and self.rows:
            s = self.summary()
            lines.append(["mean" if c == "day" else ("" if c == "date" else _fmt(s[c], c)) for c in cols])
        return _render(lines, fmt="text", title=f"{self.name}: {len(self.rows)} day(s), split {self.split}")

    def to_csv(self, path: str | os.PathLike) -> None:
        """The per-day rows as CSV (one header line, :data:`ROW_COLUMNS`)."""
        _ensure_dir(path)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS))
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r[k] for k in ROW_COLUMNS})

    def to_json(self, path: str | os.PathLike) -> None:
        """``{"name", "split", "seed", "summary", "rows"}`` as JSON (NaN written as null)."""
        _ensure_dir(path)
        payload = {"name": self.name, "split": self.split, "seed": self.seed, "wall_s": self.wall_s,
                   "summary": _nan_to_none(self.summary()), "rows": [_nan_to_none(r) for r in self.rows]}
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EvaluationResult":
        with open(path) as f:
            d = json.load(f)
        rows = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in d["rows"]]
        return cls(name=d["name"], rows=rows, split=d.get("split", "test"), seed=d.get("seed", 0),
                   wall_s=d.get("wall_s", 0.0))

    @classmethod
    def from_oracle(cls, results: Sequence, config: EnvConfig, name: str = "oracle") -> "EvaluationResult":
        """Rows straight from :class:`~mmgrid_env.oracle.OracleResult` s (the oracle's own account, no env run)."""
        rows = []
        for res in results:
            d = res.dispatch
            cons = np.asarray(d["soc_violation"])
            row = {
                "day": res.day, "date": res.date, "objective_eur": res.objective_eur, "cost_eur": res.cost_eur,
                "cost_grid_eur": float(np.sum(d["cost_grid_eur"])), "cost_mt_eur": float(np.sum(d["cost_mt_eur"])),
                "cost_ess_eur": float(np.sum(d["cost_ess_eur"])), "cost_upper_eur": float(np.sum(d["cost_upper_eur"])),
                "loss_cost_eur": float(np.sum(d["loss_cost_eur"])),
                "balancing_eur": float(np.sum(d["cost_balancing_eur"])),
                "voltage_penalty_eur": float(np.sum(d["voltage_penalty_eur"])), "soc_penalty_eur": res.soc_penalty_eur,
                "curtailment_kwh": float(np.sum(d["curtailment_kw"])) * config.dt_h,
                "shedding_kwh": float(np.sum(d["shedding_kw"])) * config.dt_h,
                "spill_kwh": float(np.sum(d["spill_kw"])) * config.dt_h,
                "soc_violation_rate": float(np.mean(cons > SOC_VIOLATION_TOL)),
                "relaxation_gap_mean_pu": float(np.mean(d["relaxation_gap_pu"])),
                "relaxation_gap_max_pu": float(np.max(d["relaxation_gap_pu"])), "opf_fallback_steps": 0,
                "team_return": -res.objective_eur, "oracle_objective_eur": res.objective_eur,
                "oracle_cost_eur": res.cost_eur, "optimality_gap": 0.0, "random_objective_eur": float("nan"),
                "normalised_score": 1.0, "wall_s": res.solve_time_s,
            }
            rows.append(row)
        return cls(name=name, rows=rows, split="custom", config=config)


def _ensure_dir(path) -> None:
    d = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(d, exist_ok=True)


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else
                (v.item() if isinstance(v, np.generic) else v)) for k, v in d.items()}


def _fmt(v, col: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if col in ("day", "n_days", "opf_fallback_steps"):
        return f"{int(round(float(v)))}" if col != "opf_fallback_steps" else f"{float(v):.2g}"
    if col == "date" or isinstance(v, str):
        return str(v)
    if col in ("optimality_gap", "soc_violation_rate"):
        return f"{100 * float(v):.2f} %"
    if col.endswith("_pu"):
        return f"{float(v):.1e}"
    if col == "normalised_score":
        return f"{float(v):.3f}"
    if col.endswith("_s"):
        return f"{float(v):.3f}"
    return f"{float(v):.2f}"


def _render(lines: list[list[str]], fmt: str = "text", title: str | None = None) -> str:
    if fmt == "markdown":
        head, body = lines[0], lines[1:]
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    widths = [max(len(str(r[j])) for r in lines) for j in range(len(lines[0]))]
    out = [title] if title else []
    for k, r in enumerate(lines):
        out.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- running
def _policy_from_name(name: str, env: MultiMicrogridEnv, seed: int, oracle_cache_dir=None):
    if name == "oracle":
        from .oracle import OraclePolicy

        return OraclePolicy(cache_dir=oracle_cache_dir, env=env)
    from .policies import make_policy

    return make_policy(name, env, seed=seed)


def run_day(env: MultiMicrogridEnv, policy: Policy, day: int, seed: int | None = None, record: bool = False,
            oracle_result=None) -> tuple[dict, dict | None]:
    """Run ``policy`` for one whole day on ``env``; return ``(row, trajectory or None)``.

    The row has the keys :data:`ROW_COLUMNS` (oracle columns filled from ``oracle_result`` when given).
    """
    t0 = time.perf_counter()
    obs, infos0 = env.reset(seed=seed, options={"day": int(day)})
    if hasattr(policy, "reset"):
        policy.reset()
    agents = list(env.possible_agents)
    a0 = agents[0]
    acc = dict.fromkeys(("cost_eur", "cost_upper_eur", "loss_cost_eur", "voltage_penalty_eur", "team_return"), 0.0)
    per_agent = {key: 0.0 for key in ("cost_grid_eur", "cost_mt_eur", "cost_ess_eur", "cost_balancing_eur",
                                      "curtailment_kw", "shedding_kw", "spill_kw", "soc_violation")}
    n_viol, n_agent_steps, gaps, fallback = 0, 0, [], 0
    shared_kw, loss_kw, limit_hours, v_lo, v_hi = 0.0, 0.0, 0, math.inf, -math.inf
    v_min_lim = env.config.opf.v_min_pu + VOLTAGE_LIMIT_TOL_PU
    v_max_lim = env.config.opf.v_max_pu - VOLTAGE_LIMIT_TOL_PU
    steps = []
    while env.agents:
        actions = policy(obs)
        obs, rewards, terms, truncs, infos = env.step(actions)
        sysd = infos[a0]
        acc["cost_eur"] += sysd["cost_total_eur"]
        acc["cost_upper_eur"] += sysd["cost_upper_eur"]
        acc["loss_cost_eur"] += sysd["loss_cost_eur"]
        acc["voltage_penalty_eur"] += sysd["voltage_penalty_eur"]
        acc["team_return"] += sysd["team_reward"]
        gaps.append(sysd["relaxation_gap_pu"])
        loss_kw += sysd["loss_kw"]
        v_lo, v_hi = min(v_lo, sysd["v_min_pu"]), max(v_hi, sysd["v_max_pu"])
        limit_hours += int(sysd["v_min_pu"] <= v_min_lim or sysd["v_max_pu"] >= v_max_lim)
        fallback += int(sysd["opf_status"] != 0)
        for a in agents:
            inf = infos[a]
            for key in per_agent:
                per_agent[key] += inf[key]
            n_viol += int(inf["soc_violation"] > SOC_VIOLATION_TOL)
            shared_kw += max(inf["shared_kw"], 0.0)
            n_agent_steps += 1
        if record:
            steps.append(infos)
    cfg = env.config
    row = {
        "day": int(day), "date": env.dataset.days[int(day)], "objective_eur": -acc["team_return"],
        "cost_eur": acc["cost_eur"], "cost_grid_eur": per_agent["cost_grid_eur"],
        "cost_mt_eur": per_agent["cost_mt_eur"], "cost_ess_eur": per_agent["cost_ess_eur"],
        "cost_upper_eur": acc["cost_upper_eur"], "loss_cost_eur": acc["loss_cost_eur"],
        "balancing_eur": per_agent["cost_balancing_eur"], "voltage_penalty_eur": acc["voltage_penalty_eur"],
        "soc_penalty_eur": cfg.beta * per_agent["soc_violation"],
        "curtailment_kwh": per_agent["curtailment_kw"] * cfg.dt_h, "shedding_kwh": per_agent["shedding_kw"] * cfg.dt_h,
        "spill_kwh": per_agent["spill_kw"] * cfg.dt_h, "shared_kwh": shared_kw * cfg.dt_h,
        "loss_kwh": loss_kw * cfg.dt_h, "voltage_limit_hours": limit_hours, "v_min_pu": v_lo, "v_max_pu": v_hi,
        "soc_violation_rate": n_viol / max(n_agent_steps, 1),
        "relaxation_gap_mean_pu": float(np.mean(gaps)) if gaps else 0.0,
        "relaxation_gap_max_pu": float(np.max(gaps)) if gaps else 0.0, "opf_fallback_steps": fallback,
        "team_return": acc["team_return"], "oracle_objective_eur": float("nan"), "oracle_cost_eur": float("nan"),
        "optimality_gap": float("nan"), "random_objective_eur": float("nan"), "normalised_score": float("nan"),
        "wall_s": time.perf_counter() - t0,
    }
    if oracle_result is not None:
        o = oracle_result.objective_eur
        row["oracle_objective_eur"], row["oracle_cost_eur"] = o, oracle_result.cost_eur
        row["optimality_gap"] = (row["objective_eur"] - o) / abs(o) if o != 0 else float("nan")
    traj = None
    if record:
        f = env.fleet
        traj = {"day": int(day), "date": row["date"], "agents": agents, "initial": infos0, "steps": steps,
                "soc_min": f.soc_min.copy(), "soc_max": f.soc_max.copy(), "policy": None}
    return row, traj


def evaluate(policy: Policy | str, split: str = "test", days: Sequence[int] | None = None, seed: int = 0,
             config: EnvConfig | str | None = None, oracle: bool = False, progress: bool = True,
             record: bool | Iterable[int] = False, oracle_cache_dir: str | os.PathLike | None = None,
             name: str | None = None, **env_overrides) -> EvaluationResult:
    """Run ``policy`` over whole days and tabulate the costs.

    Args:
        policy: a callable ``policy(observations) -> actions`` (``reset()`` and ``bind_env(env)`` are called if
            present, see the module docs), or a name: ``"rule_based"``, ``"rule_based_day_ahead"``, ``"zero"``,
            ``"random"`` (from :mod:`mmgrid_env.policies`, built for this env) or ``"oracle"`` (the
            oracle's dispatch replayed through the env).
        split: ``"test"`` (default, 73 days in the bundled data), ``"validation"``, ``"train"``, ``"all"`` or a
            stress split (:data:`mmgrid_env.data.STRESS_SPLITS`).
        days: dataset day indices to run instead of a split (as in ``env.reset(options={"day": k})``).
        seed: passed to the first ``env.reset`` (and to the ``"random"`` policy).
        config: an :class:`EnvConfig` or preset name (default ``"paper"``); ``env_overrides`` are passed to the
            env as in :func:`mmgrid_env.parallel_env` (e.g. ``beta=10``, ``opf={...}``).
        oracle: also solve each day's oracle (:func:`mmgrid_env.oracle.solve_day`, memoised in the process and
            cached on disk under ``oracle_cache_dir`` if given) and run the random reference
            (:func:`mmgrid_env.protocol.random_reference`, cached there too): fill the oracle columns, the
            optimality gap and the normalised score.
        progress: show a tqdm progress bar (on stderr) when more than one day runs.
        record: ``True`` records every day's trajectory, or an iterable of days to record
            (:attr:`EvaluationResult.trajectories`, the input of :mod:`mmgrid_env.plotting`).
        name: label of the result (default: the policy's name or class name).

    Returns:
        an :class:`EvaluationResult` (``.rows``, ``.summary()``, ``.table()``, ``.to_csv()``, ``.to_json()``).
    """
    t0 = time.perf_counter()
    env = MultiMicrogridEnv(config, **env_overrides)
    if isinstance(policy, str):
        label = name or policy
        policy = _policy_from_name(policy, env, seed, oracle_cache_dir)
    else:
        label = name or getattr(policy, "name", None) or type(policy).__name__
    if hasattr(policy, "bind_env"):
        policy.bind_env(env)
    if days is None:
        day_list = [int(d) for d in env.dataset.split_days(split)]
        split_label = split
    else:
        day_list = [int(d) for d in days]
        split_label = "custom"
        bad = [d for d in day_list if not 0 <= d < env.dataset.n_days]
        if bad:
            raise ValueError(f"days {bad} are out of range: the dataset has days 0..{env.dataset.n_days - 1}")
    rec = set(day_list) if record is True else (set() if record is False else {int(d) for d in record})
    it: Iterable[int] = day_list
    bar = None
    if progress and len(day_list) > 1:
        try:
            from tqdm.auto import tqdm

            # not a terminal (logs, CI): one final line instead of a redraw per day
            bar = tqdm(day_list, desc=f"evaluate {label}", unit="day", file=sys.stderr,
                       mininterval=0.5 if sys.stderr.isatty() else 1e9)
            it = bar
        except ImportError:  # pragma: no cover - tqdm is optional
            pass
    rows, trajs = [], {}
    for i, d in enumerate(it):
        orc = None
        if oracle:
            from .oracle import solve_day

            orc = solve_day(env.config, d, cache_dir=oracle_cache_dir)
        row, traj = run_day(env, policy, d, seed=seed if i == 0 else None, record=d in rec, oracle_result=orc)
        rows.append(row)
        if oracle:
            from .protocol import normalised_score, random_reference

            r = random_reference(env.config, [d], cache_dir=oracle_cache_dir)[d]
            row["random_objective_eur"] = r
            row["normalised_score"] = normalised_score(row["objective_eur"], row["oracle_objective_eur"], r)
        if traj is not None:
            traj["policy"] = label
            trajs[d] = traj
        if bar is not None:
            bar.set_postfix(cost=f"{row['objective_eur']:.0f}€")
    if bar is not None:
        bar.close()
    return EvaluationResult(name=label, rows=rows, split=split_label, seed=seed, config=env.config,
                            trajectories=trajs, wall_s=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------- comparison
COMPARE_COLUMNS = ("n_days", "normalised_score", "objective_eur", "optimality_gap", "cost_eur", "cost_grid_eur",
                   "cost_mt_eur", "cost_ess_eur", "cost_upper_eur", "soc_penalty_eur", "shedding_kwh", "spill_kwh",
                   "curtailment_kwh", "soc_violation_rate", "relaxation_gap_max_pu")
"""Default columns of :func:`compare_table` (means over the common days)."""


def compare_table(results: Mapping[str, Any] | Sequence[EvaluationResult], columns: Sequence[str] | None = None,
                  fmt: str = "markdown", reference: str | None = "oracle", common_days: bool = True) -> str:
    """A table comparing several results, one row per name, the mean over days of each column.

    Args:
        results: ``{name: result}`` (or a list of :class:`EvaluationResult`, named by their ``name``). A result
            is an :class:`EvaluationResult` (from :func:`evaluate`), a path to a JSON written by
            :meth:`EvaluationResult.to_json`, or a list of :class:`~mmgrid_env.oracle.OracleResult` (needs their
            ``config``: pass ``EvaluationResult.from_oracle(list, config)`` instead if in doubt).
        columns: which summary columns (default :data:`COMPARE_COLUMNS`; any of :data:`ROW_COLUMNS`).
        fmt: ``"markdown"`` (default, for docs) or ``"text"`` (aligned columns for a terminal).
        reference: name of the result that serves as the oracle for the ``optimality_gap`` column of results
            that were run without ``oracle=True``: per day, (objective − reference objective)/|reference
            objective|, averaged over the common days. Results run with ``oracle=True`` keep their own gap.
            ``None`` or a missing name: no such fallback ("—").
        common_days: restrict every result to the days all of them share (the table says how many); with
            ``False`` each row averages over its own days.

    Returns:
        the table as a string. Example::

            print(compare_table({"mappo": res_mappo, "rule_based": res_rb, "oracle": evaluate("oracle")}))
    """
    if not isinstance(results, Mapping):
        results = {r.name: r for r in results}
    res: dict[str, EvaluationResult] = {}
    for nm, r in results.items():
        if isinstance(r, (str, os.PathLike)):
            r = EvaluationResult.from_json(r)
        elif isinstance(r, (list, tuple)):
            from .config import make_config

            r = EvaluationResult.from_oracle(r, make_config(), name=nm)
        res[nm] = r
    if common_days and res:
        shared = set.intersection(*(set(r.days) for r in res.values()))
        if any(len(set(r.days)) != len(shared) for r in res.values()):
            warnings.warn(f"compare_table: results cover different days; comparing the {len(shared)} common day(s)",
                          stacklevel=2)
        res = {nm: r.subset(shared) for nm, r in res.items()}
    cols = list(columns or COMPARE_COLUMNS)
    ref = res.get(reference) if reference else None
    ref_obj = {int(r["day"]): r["objective_eur"] for r in ref.rows} if ref is not None else {}
    lines = [["policy"] + cols]
    for nm, r in res.items():
        s = r.summary()
        if "optimality_gap" in cols and not math.isfinite(s.get("optimality_gap", float("nan"))) and ref_obj:
            g = [(row["objective_eur"] - ref_obj[int(row["day"])]) / abs(ref_obj[int(row["day"])])
                 for row in r.rows if int(row["day"]) in ref_obj and ref_obj[int(row["day"])] != 0]
            s["optimality_gap"] = float(np.mean(g)) if g else float("nan")
        lines.append([nm] + [_fmt(s.get(c, float("nan")), c) for c in cols])
    return _render(lines, fmt=fmt)


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``mmgrid-evaluate`` / ``python -m mmgrid_env.evaluate``: evaluate policies, print and save the tables."""
    p = argparse.ArgumentParser(
        prog="mmgrid-evaluate",
        description="Evaluate policies on whole days of mmgrid-env; print a comparison table and write CSV/JSON. "
                    "rule_based, rule_based_day_ahead, zero and random are mmgrid_env.policies; oracle = the "
                    "perfect-foresight optimum replayed through the env.")
    p.add_argument("--policy", nargs="+", default=["rule_based"],
                   choices=["rule_based", "rule_based_day_ahead", "zero", "random", "oracle"],
                   help="one or more policies (rule_based_day_ahead needs a preset with a price forecast, "
                        "e.g. --preset paper_day_ahead)")
    p.add_argument("--split", default="test", choices=list(SPLITS),
                   help="days to evaluate: test (default), validation, train, all, or a stress split (subsets of the "
                        "test days: " + ", ".join(STRESS_SPLITS) + ")")
    p.add_argument("--days", type=int, nargs="+", default=None, help="dataset day indices (overrides --split)")
    p.add_argument("--oracle", action="store_true", help="solve each day's oracle: optimality gaps")
    p.add_argument("--preset", default="paper", choices=sorted(presets), help="config preset (default: paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for <policy>.csv/.json, the run record <policy>.record.json, "
                                               "comparison.md and plots")
    p.add_argument("--cache-dir", default=None,
                   help="oracle cache folder (default: <out>/oracle_cache when --out is given)")
    p.add_argument("--plot-day", type=int, default=None, help="record this day and save its plots to --out")
    p.add_argument("--per-day", action="store_true", help="also print each policy's per-day table")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    n_days = load_dataset(presets[args.preset].dataset).n_days
    for d in (args.days or []) + ([args.plot_day] if args.plot_day is not None else []):
        if not 0 <= d < n_days:
            p.error(f"day {d} is out of range: the dataset has days 0..{n_days - 1}")
    cache_dir = args.cache_dir or (os.path.join(args.out, "oracle_cache") if args.out else None)
    days = args.days
    if args.plot_day is not None and days is not None and args.plot_day not in days:
        days = list(days) + [args.plot_day]
    results: dict[str, EvaluationResult] = {}
    t0 = time.perf_counter()
    for name in args.policy:
        try:
            res = evaluate(name, split=args.split, days=days, seed=args.seed, config=args.preset,
                           oracle=args.oracle, progress=not args.no_progress,
                           record=[args.plot_day] if args.plot_day is not None else False,
                           oracle_cache_dir=cache_dir)
        except (ImportError, ValueError) as exc:  # ConfigError, DataError: one line, no traceback
            print(f"mmgrid-evaluate: error: {exc}", file=sys.stderr)
            return 2
        results[name] = res
        if args.per_day:
            print(res.table())
            print()
        if args.out:
            from .protocol import run_record, write_run_record

            res.to_csv(os.path.join(args.out, f"{name}.csv"))
            res.to_json(os.path.join(args.out, f"{name}.json"))
            write_run_record(run_record([res], policy=name, hyperparameters={"preset": args.preset}),
                             os.path.join(args.out, f"{name}.record.json"))
        if args.out and args.plot_day is not None and args.plot_day in res.trajectories:
            from .plotting import plot_day

            plot_day(res.trajectories[args.plot_day], args.out, prefix=f"{name}_day{args.plot_day:03d}")
    n = len(next(iter(results.values())).rows) if results else 0
    table = compare_table(results, fmt="markdown", reference="oracle" if "oracle" in results else None)
    header = (f"mmgrid-env, preset {args.preset!r}, {'days ' + str(days) if days else 'split ' + args.split} "
              f"({n} days), seed {args.seed}; means per day; wall {time.perf_counter() - t0:.1f} s")
    print(header)
    print(table)
    if args.out:
        with open(os.path.join(args.out, "comparison.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
    return 0


class _CallableModule(types.ModuleType):
    """Lets the module itself be called: ``mmgrid_env.evaluate(policy, ...)`` is :func:`evaluate`, while
    ``mmgrid_env.evaluate.compare_table``, ``python -m mmgrid_env.evaluate`` and ``from mmgrid_env.evaluate
    import ...`` keep working."""

    def __call__(self, *args, **kwargs) -> EvaluationResult:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
