"""Re-evaluate a saved MAPPO checkpoint on the test days (or chosen days), against the oracle and the rule-based policy.

    python examples/evaluate_checkpoint.py runs/mappo/paper_default_seed1/mappo.pt
    python examples/evaluate_checkpoint.py ckpt.pt --days 4 9 14 --no-oracle --plot-day 184 --out results/mappo

The checkpoint holds the environment preset it was trained on; the evaluation uses that preset (``--env-preset``
overrides it, if the observation size matches). The policy plays the mean action (``--stochastic`` samples).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from mmgrid_env.data import SPLITS
from mmgrid_baselines.mappo import CheckpointError, policy_from_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a mappo.pt written by examples/train_mappo.py")
    p.add_argument("--split", default="test", choices=list(SPLITS))
    p.add_argument("--days", type=int, nargs="+", default=None, help="dataset day indices (overrides --split)")
    p.add_argument("--env-preset", default=None, help="evaluate on this preset instead of the checkpoint's")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle (no optimality gap)")
    p.add_argument("--no-rule-based", action="store_true", help="skip the rule-based policy")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of playing the mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for eval_<policy>.csv/.json, comparison.md and plots")
    p.add_argument("--plot-day", type=int, default=None, help="save the dispatch plots of this day to --out")
    p.add_argument("--oracle-cache", default=None, help="oracle cache folder (default runs/oracle_cache)")
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(argv)

    from mmgrid_env import compare_table, evaluate, parallel_env

    try:
        policy, args, env_info = policy_from_checkpoint(ns.checkpoint, deterministic=not ns.stochastic)
    except (CheckpointError, FileNotFoundError) as exc:
        p.error(str(exc))  # one line, exit status 2
    preset = ns.env_preset or env_info["env_preset"]
    overrides = dict(env_info.get("env_overrides") or {})
    env = parallel_env(preset, **overrides)
    if env.observation_space(env.possible_agents[0]).shape[0] != env_info["obs_dim"]:
        p.error(f"preset {preset!r} has observations of size {env.observation_space(env.possible_agents[0]).shape[0]}"
                f" but the checkpoint was trained on {env_info['env_preset']!r} (size {env_info['obs_dim']})")
    days = ns.days if ns.days is not None else [int(d) for d in env.dataset.split_days(ns.split)]
    if ns.plot_day is not None and ns.plot_day not in days:
        days = list(days) + [ns.plot_day]
    cache = ns.oracle_cache or str(ROOT / "runs" / "oracle_cache")
    use_oracle = not ns.no_oracle
    common = dict(days=days, config=preset, oracle=use_oracle, progress=not ns.no_progress, oracle_cache_dir=cache,
                  seed=ns.seed, **overrides)
    t0 = time.perf_counter()
    results = {"mappo": evaluate(policy, name="mappo",
                                 record=[ns.plot_day] if ns.plot_day is not None else False, **common)}
    if not ns.no_rule_based:
        from mmgrid_env.policies import RuleBasedPolicy

        results["rule_based"] = evaluate(RuleBasedPolicy(env), name="rule_based", **common)
    if use_oracle:
        common.pop("oracle")
        results["oracle"] = evaluate("oracle", name="oracle", **common)
    cols = ("n_days", "objective_eur", "cost_eur", "optimality_gap", "soc_violation_rate", "cost_grid_eur",
            "cost_mt_eur", "cost_ess_eur", "cost_upper_eur")
    table = compare_table(results, columns=cols, fmt="markdown", reference="oracle" if use_oracle else None)
    header = (f"checkpoint {ns.checkpoint} (trained on {env_info['env_preset']!r}, seed {args.seed}), "
              f"evaluated on {preset!r}, {len(days)} day(s); means per day ({time.perf_counter() - t0:.0f} s)")
    print(header)
    print(table)
    if ns.out:
        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, r in results.items():
            r.to_csv(out / f"eval_{name}.csv")
            r.to_json(out / f"eval_{name}.json")
        (out / "comparison.md").write_text(header + "\n\n" + table + "\n")
        import dataclasses

        from mmgrid_env.protocol import run_record, write_run_record

        split = results["mappo"].split if ns.days is not None else ns.split
        results["mappo"].split = split
        write_run_record(run_record([results["mappo"]], policy="mappo",
                                    hyperparameters={"checkpoint": str(ns.checkpoint), **dataclasses.asdict(args)}),
                         out / "mappo.record.json")
        if ns.plot_day is not None:
            from mmgrid_env import plot_day

            paths = plot_day(results["mappo"].trajectories[ns.plot_day], str(out), prefix=f"mappo_day{ns.plot_day:03d}")
            print("plots:", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
