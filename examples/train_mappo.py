"""Train MAPPO on mmgrid-env, then evaluate it on the test days against the oracle and the rule-based policy.

One command, sensible defaults, the bundled data::

    python examples/train_mappo.py                          # default set (preset "paper_day_ahead", action stages)
    python examples/train_mappo.py --env-preset paper_extras # + hour of day and a one-hour price forecast only
    python examples/train_mappo.py --action-stages           # no action stages: the actor's outputs as they are
    python examples/train_mappo.py --action-stages soc_shield balance   # some of the hand-written priors
    python examples/train_mappo.py --hp paper                # Table I of the BMAPPO paper (preset "paper", plain map)
    python examples/train_mappo.py --quick                   # smoke run: ~1 minute

The default action stages (``Args.action_stages``, a :class:`mmgrid_env.control.ActionChain`) run the MT in merit order,
keep the SoC inside its limits, let the MT cover what the trade limits cannot carry and centre each trade on the
microgrid's balance.

Any field of :class:`mmgrid_baselines.mappo.Args` is an option (``--total-episodes 5000``, ``--gamma 0.95``,
``--no-anneal-lr``, ...). Outputs go to ``--out`` (default ``runs/mappo/<env>_<hp>_seed<seed>``):

* ``mappo.pt`` — the checkpoint (state_dict + the config it was trained with; ``torch.load(weights_only=True)``),
  re-evaluate it with ``python examples/evaluate_checkpoint.py <out>/mappo.pt``;
* ``progress.csv`` (one row per update), ``episodes.csv`` (one row per training episode), TensorBoard events if
  ``tensorboard`` is installed;
* ``learning_curve.png`` — training-episode cost and SoC-violation rate vs training episodes (smoothed);
* ``eval_<policy>.csv`` / ``.json`` per test day, ``comparison.md`` (MAPPO vs oracle vs rule-based; with a preset that
  shows day-ahead prices also the same rules given those prices, ``rule_based_day_ahead``), and the dispatch
  plots of one test day (``mappo_day<k>_{dispatch,soc,upper}.png``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from mmgrid_env.protocol import run_record, write_run_record
from mmgrid_baselines.common import usable_cores
from mmgrid_baselines.mappo import (HYPERPARAMETER_SETS, Args, MAPPOPolicy, save_checkpoint,
                             tensorboard_available, train)

QUICK = dict(total_episodes=96, num_envs=4, buffer_size=192, update_epochs=4)
"""``--quick``: a smoke run (a couple of minutes at most on 2 CPU cores, including the evaluation)."""
QUICK_EVAL_DAYS = 3


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (the Args options take theirs from --hp)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_Formatter)
    p.add_argument("--hp", default=None, choices=sorted(HYPERPARAMETER_SETS),
                   help="hyper-parameter set: 'default' (chosen on the paper presets), 'feeder' (chosen on the feeder "
                        "preset's validation days: the default plus the neighbours' net load in each actor's "
                        "observation, GAE lambda 0.8 and a trade residual of 0.75; the set of --env-preset feeder "
                        "unless --hp says otherwise) or 'paper' (Table I)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}, evaluation on {QUICK_EVAL_DAYS} "
                                                         "test days")
    p.add_argument("--out", default=None, help="output folder (default runs/mappo/<env>_<hp>_seed<seed>)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--eval-split", default="test",
                   help="split of the final evaluation: 'test' (default; report it once), 'validation' (to choose "
                        "hyper-parameters and priors) or a stress split")
    p.add_argument("--no-oracle", action="store_true", help="evaluate without the oracle (no optimality gap)")
    p.add_argument("--no-rule-based", action="store_true", help="do not evaluate the rule-based policy")
    p.add_argument("--eval-days", type=int, default=None,
                   help="evaluate on the first N test days only (default: all 73; --quick: 3)")
    p.add_argument("--plot-day", type=int, default=None,
                   help="dataset day for the dispatch plots (default: the first evaluated test day)")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (learning curve, dispatch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--oracle-cache", default=None,
                   help="oracle cache folder (default runs/oracle_cache; the oracle is deterministic per config)")
    g = p.add_argument_group("Args (mmgrid_baselines.mappo.Args): unset options take the --hp set's value, shown as "
                             "[default | paper]")
    docs = _field_docs()
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        d, pp = Args.from_preset("default"), Args.from_preset("paper")
        help_ = f"{docs.get(f.name, '')} [{getattr(d, f.name)} | {getattr(pp, f.name)}]".replace("%", "%%")
        if f.name == "env_workers":  # the one option this script sets itself
            help_ = (f"{docs.get(f.name, '')} Unset: one per free core, at most one per env copy (here: "
                     f"{default_env_workers(d.num_envs)} for {d.num_envs} copies).")
        if f.type in ("bool", bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif str(f.type).startswith("tuple"):  # a list of names (``--action-stages`` alone: none)
            g.add_argument(flag, dest=f.name, nargs="*", default=None, help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            g.add_argument(flag, dest=f.name, type=typ, default=None, help=help_)
    return p


def _field_docs() -> dict[str, str]:
    """The docstring under each field of :class:`Args` (first sentence), for ``--help``."""
    import ast
    import inspect
    import re

    try:
        body = ast.parse(inspect.getsource(Args)).body[0].body
    except (OSError, TypeError):
        return {}
    out = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            text = " ".join(str(nxt.value.value).split())
            out[node.target.id] = re.split(r"\.\s+(?=[A-Z`\"])", text)[0].rstrip(".") + "."
    return out


def args_from_cli(ns: argparse.Namespace) -> Args:
    if ns.hp is None:  # each preset's chosen set; an explicit --hp wins
        ns.hp = "feeder" if ns.env_preset == "feeder" else "default"
    overrides = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Args) if getattr(ns, f.name) is not None}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if ns.quick:
        overrides = {**QUICK, **overrides}
    args = Args.from_preset(ns.hp, **overrides)
    if ns.env_workers is None:  # unless told: one worker process per free core (none on a single core)
        args.env_workers = default_env_workers(args.num_envs)
    return args


def default_env_workers(num_envs: int, cores: int | None = None) -> int:
    """Worker processes for the env copies when ``--env-workers`` is not given: one per core the run may use, at
    most one per copy, and none on a single core (a worker would only add its messages to the same core's work).
    Running several trainings at once? Give each ``--env-workers 0``."""
    cores = usable_cores() if cores is None else cores
    return 0 if cores < 2 else min(cores, num_envs)


# ------------------------------------------------------------------------------------------------------ outputs
def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start)."""
    x = np.asarray(x, float)
    if x.size == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def write_episodes_csv(path: Path, episodes: list[dict]) -> None:
    if not episodes:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(episodes[0]))
        w.writeheader()
        w.writerows(episodes)


def plot_learning_curve(path: Path, episodes: list[dict], title: str, refs: dict[str, float] | None = None,
                        updates: list[dict] | None = None) -> None:
    """Training-episode cost (€/day) and SoC-violation rate vs training episodes, raw and smoothed, plus the
    greedy (mean-action) evaluation on fixed training days logged every few updates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = np.array([r["episode"] for r in episodes])
    cost = np.array([r["cost_eur"] for r in episodes])
    viol = np.array([r["soc_violation_rate"] for r in episodes])
    w = max(10, len(ep) // 50)
    fig = Figure(figsize=(9, 6.5), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(ep, cost, color="tab:blue", alpha=0.15, lw=0.5, label="episode (sampled actions)")
    ax1.plot(ep, smooth(cost, w), color="tab:blue", lw=2, label=f"moving average ({w} episodes)")
    greedy = [u for u in (updates or []) if np.isfinite(u.get("greedy_cost_eur", np.nan))]
    if greedy:
        ax1.plot([u["episodes"] for u in greedy], [u["greedy_cost_eur"] for u in greedy], "o-", color="k", ms=3,
                 lw=1, label="greedy (mean action), fixed training days")
    for (name, val), col in zip((refs or {}).items(), ("tab:green", "tab:orange", "tab:red")):
        ax1.axhline(val, color=col, ls="--", lw=1, label=name)
    lo, hi = np.percentile(cost, [1, 99]) if cost.size else (0, 1)
    ax1.set_ylim(min(lo, *(refs or {0: lo}).values()) * 0.9, hi * 1.05)
    ax1.set_ylabel("training-day cost (€/day)")
    ax1.set_title(title)
    ax1.legend(loc="upper right", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(ep, 100 * viol, color="tab:red", alpha=0.15, lw=0.5)
    ax2.plot(ep, 100 * smooth(viol, w), color="tab:red", lw=2, label="training episodes (moving average)")
    if greedy:
        ax2.plot([u["episodes"] for u in greedy], [100 * u["greedy_soc_violation_rate"] for u in greedy], "o-",
                 color="k", ms=3, lw=1, label="greedy (mean action), fixed training days")
        ax2.legend(loc="upper right", fontsize=8)
    ax2.set_ylabel("SoC-violation rate (%)")
    ax2.set_xlabel("training episodes (days)")
    ax2.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    args = args_from_cli(ns)
    out = Path(ns.out or ROOT / "runs" / "mappo" / f"{args.env_preset}_{ns.hp}_seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    progress = not ns.no_progress
    print(f"MAPPO ({ns.hp} hyper-parameters) on preset {args.env_preset!r}: {args.total_episodes} training "
          f"episodes on {args.num_envs} env copies"
          + (f" ({args.env_workers} worker processes)" if args.env_workers else "")
          + f", {args.rollout_steps} transitions/update, "
          f"{args.num_updates} updates -> {out}")
    print("logging: progress.csv, episodes.csv" + (", TensorBoard events" if tensorboard_available() else
                                                    " (TensorBoard: not installed, `pip install tensorboard`)"))
    with open(out / "args.json", "w") as f:
        json.dump({"hp": ns.hp, **dataclasses.asdict(args)}, f, indent=1)

    # ------------------------------------------------------------------ train (train split only)
    res = train(args, log_dir=str(out), progress=progress)
    write_episodes_csv(out / "episodes.csv", res.episodes)
    save_checkpoint(out / "mappo.pt", res.agent, args, res.env_info,
                    extra={"hp": ns.hp, "env_steps_per_s": res.env_steps_per_s, "train_wall_s": res.wall_s,
                           "episodes": len(res.episodes)})
    n_ep = len(res.episodes)
    k = max(1, n_ep // 10)
    first = np.mean([r["cost_eur"] for r in res.episodes[:k]])
    last = np.mean([r["cost_eur"] for r in res.episodes[-k:]])
    v_first = np.mean([r["soc_violation_rate"] for r in res.episodes[:k]])
    v_last = np.mean([r["soc_violation_rate"] for r in res.episodes[-k:]])
    print(f"trained {n_ep} episodes ({n_ep * 24} env steps) in {res.wall_s:.0f} s: "
          f"{res.env_steps_per_s:.0f} env steps/s (rollouts + updates). Training-day cost (sampled actions) "
          f"first/last 10 %: {first:.0f} -> {last:.0f} €/day; SoC-violation rate {100 * v_first:.1f} % -> "
          f"{100 * v_last:.1f} %")
    print(f"checkpoint: {out / 'mappo.pt'}")
    if ns.no_eval:
        if not ns.no_plots:
            plot_learning_curve(out / "learning_curve.png", res.episodes, f"MAPPO ({ns.hp}), {args.env_preset}",
                                updates=res.updates)
        return 0

    # ------------------------------------------------------------------ evaluate on the test (or validation) days
    from mmgrid_env import compare_table, evaluate
    from mmgrid_env import parallel_env

    env = parallel_env(args.env_preset)
    test_days = [int(d) for d in env.dataset.split_days(ns.eval_split)]
    n_eval = ns.eval_days if ns.eval_days is not None else (QUICK_EVAL_DAYS if ns.quick else None)
    days = test_days[:n_eval] if n_eval is not None else test_days
    plot_day = ns.plot_day if ns.plot_day is not None else days[0]
    record = [] if ns.no_plots else [plot_day]
    if plot_day not in days and record:
        days = days + [plot_day]
    where = dict(split=ns.eval_split) if days == test_days else dict(days=days)  # the split's name in the record
    use_oracle = not ns.no_oracle
    cache = ns.oracle_cache or str(ROOT / "runs" / "oracle_cache")
    t0 = time.perf_counter()
    policy = MAPPOPolicy.from_args(res.agent, res.env_info["agents"], args, deterministic=True)
    results = {}
    results["mappo"] = evaluate(policy, **where, config=args.env_preset, oracle=use_oracle, progress=progress,
                                record=record, oracle_cache_dir=cache, name="mappo")
    if not ns.no_rule_based:
        from mmgrid_env.policies import RuleBasedPolicy

        results["rule_based"] = evaluate(RuleBasedPolicy(env), **where, config=args.env_preset,
                                         oracle=use_oracle, progress=progress, oracle_cache_dir=cache,
                                         name="rule_based")
        if env.config.obs_price_forecast:  # the same rules with the forecast the actors see: a fair yardstick
            results["rule_based_day_ahead"] = evaluate(
                RuleBasedPolicy(env, reference="day_ahead"), **where, config=args.env_preset, oracle=use_oracle,
                progress=progress, oracle_cache_dir=cache, name="rule_based_day_ahead")
    if use_oracle:
        results["oracle"] = evaluate("oracle", **where, config=args.env_preset, progress=progress,
                                     oracle_cache_dir=cache, name="oracle")
    for name, r in results.items():
        r.to_csv(out / f"eval_{name}.csv")
        r.to_json(out / f"eval_{name}.json")
    # the run record: the learner's per-day results with its hyper-parameters, versions and git revision
    write_run_record(run_record([results["mappo"]], policy="mappo",
                                hyperparameters={"hp": ns.hp, **dataclasses.asdict(args)}), out / "mappo.record.json")
    cols = ("n_days", "objective_eur", "cost_eur", "optimality_gap", "soc_violation_rate", "cost_grid_eur",
            "cost_mt_eur", "cost_ess_eur", "cost_upper_eur")
    table = compare_table(results, columns=cols, fmt="markdown",
                          reference="oracle" if use_oracle else None)
    header = (f"MAPPO ({ns.hp} hyper-parameters, preset {args.env_preset!r}, seed {args.seed}, {n_ep} training "
              f"episodes, {res.env_steps_per_s:.0f} env steps/s) on {len(days)} {ns.eval_split} day(s); means per day "
              f"(evaluation {time.perf_counter() - t0:.0f} s)")
    print(header)
    print(table)
    with open(out / "comparison.md", "w") as f:
        f.write(header + "\n\n" + table + "\n")

    if not ns.no_plots:
        refs = {f"{nm} (test days, mean)": results[nm].summary()["cost_eur"]
                for nm in ("rule_based", "rule_based_day_ahead", "oracle") if nm in results}
        plot_learning_curve(out / "learning_curve.png", res.episodes,
                            f"MAPPO ({ns.hp}), preset {args.env_preset}: training episodes", refs,
                            updates=res.updates)
        from mmgrid_env import plot_day as plot_day_fn

        traj = results["mappo"].trajectories.get(plot_day)
        if traj is not None:
            paths = plot_day_fn(traj, str(out), prefix=f"mappo_day{plot_day:03d}")
            print("plots:", out / "learning_curve.png", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
