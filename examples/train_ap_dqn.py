"""Train AP-DQN (or its ablations) on mmgrid-env and evaluate on the test days.

Examples::

    python examples/train_ap_dqn.py                         # AP-DQN, up to 30 min, all 73 test days
    python examples/train_ap_dqn.py --quick                 # smoke run, well under 2 min
    python examples/train_ap_dqn.py --variants dqn per_dqn att_dqn ap_dqn --total-steps 12000 --eval-days 20

Per variant, under ``--out`` (default ``runs/ap_dqn``): ``<variant>_s<seed>/log.csv`` (one row per training
episode), ``model.pt`` (``torch.save`` of state_dict + config; load with
``mmgrid_baselines.ap_dqn.load_checkpoint``, which uses ``weights_only=True``), ``learning_curve.png`` and
``eval.csv``/``eval.json`` (the evaluation harness's per-day rows). ``comparison.md`` holds the table of all
variants with the rule-based policy (and the oracle's optimality gap with ``--oracle``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from mmgrid_baselines.ap_dqn import VARIANTS, APDQNPolicy, Args, load_checkpoint, save_checkpoint, train
from mmgrid_env import compare_table, evaluate, parallel_env
from mmgrid_env.protocol import run_record, write_run_record


def plot_curve(log: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return
    ep = np.array([r["episode"] for r in log])
    cost = np.array([r["cost_eur"] for r in log], float)
    k = max(1, min(20, len(cost) // 5))
    smooth = np.convolve(cost, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, cost, lw=0.6, alpha=0.4, label="episode cost (train day)")
    ax.plot(ep[k - 1:], smooth, lw=1.8, label=f"moving mean ({k})")
    ax.set_xlabel("episode (day)")
    ax.set_ylabel("system cost (€ / day)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mt_levels(text: str) -> int | str:
    """``--mt-levels``: ``merit_order`` or a whole number of levels (at least 2)."""
    if text == "merit_order":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected 'merit_order' or a whole number of levels >= 2, got {text!r}")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["ap_dqn"], choices=sorted(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=None, help="env steps per variant (default 60000)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="wall-clock cap per variant (default: none, so that the same seed gives the same run on a "
                        "loaded machine)")
    p.add_argument("--eval-days", type=int, default=None, help="evaluate on the first N test days (default all)")
    p.add_argument("--oracle", action="store_true", help="also solve the oracle per test day (optimality gap)")
    p.add_argument("--no-rule-based", action="store_true", help="skip the rule-based comparison")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 episodes, 3 test days")
    p.add_argument("--env-preset", default=None, help="env preset (default: Args.config, 'paper_day_ahead')")
    p.add_argument("--mt-levels", type=_mt_levels, default=None,
                   help="MT levels: 'merit_order' (default: the MT at its price-optimal set-point, a hand-written "
                        "prior) or a number of evenly spaced levels the agent chooses from")
    p.add_argument("--soc-shield", action=argparse.BooleanOptionalAction, default=None,
                   help="clip ESS choices to the operational SoC limits (default: Args.soc_shield)")
    p.add_argument("--reward-baseline", choices=["none", "net_load"], default=None,
                   help="exogenous reward baseline (default: Args.reward_baseline)")
    p.add_argument("--out", default="runs/ap_dqn")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    progress = not a.no_progress

    base = dict(seed=a.seed)
    if a.quick:
        base.update(total_steps=240, time_budget_s=90.0, learning_starts=48, batch_size=32, target_update=50,
                    buffer_size=4096)
    if a.total_steps is not None:
        base["total_steps"] = a.total_steps
    if a.time_budget_s is not None:
        base["time_budget_s"] = a.time_budget_s
    if a.env_preset is not None:
        base["config"] = a.env_preset
    if a.soc_shield is not None:
        base["soc_shield"] = a.soc_shield
    if a.reward_baseline is not None:
        base["reward_baseline"] = a.reward_baseline
    if a.mt_levels is not None:
        base["mt_levels"] = a.mt_levels
    n_eval = a.eval_days if a.eval_days is not None else (3 if a.quick else None)
    test_days = [int(d) for d in parallel_env().dataset.split_days("test")]
    days = test_days[:n_eval] if n_eval else test_days
    os.makedirs(a.out, exist_ok=True)

    results = {}
    for v in a.variants:
        args = Args(variant=v, **base)
        run_dir = os.path.join(a.out, f"{v}_s{a.seed}")
        os.makedirs(run_dir, exist_ok=True)
        print(f"[{v}] training: total_steps={args.total_steps} time_budget_s={args.time_budget_s} "
              f"per={args.per} attention={args.attention}", flush=True)
        res = train(args, log_path=os.path.join(run_dir, "log.csv"), progress=progress)
        ckpt = os.path.join(run_dir, "model.pt")
        save_checkpoint(ckpt, res)
        qnet, args2 = load_checkpoint(ckpt)  # evaluate what was saved
        plot_curve(res.log, os.path.join(run_dir, "learning_curve.png"),
                   f"{v} seed {a.seed}: {res.env_steps} env steps, {res.wall_s:.0f} s")
        print(f"[{v}] trained {res.env_steps} env steps / {len(res.log)} episodes / {res.updates} updates "
              f"in {res.wall_s:.1f} s", flush=True)
        t0 = time.perf_counter()
        ev = evaluate(APDQNPolicy(qnet, args2), days=days, oracle=a.oracle, progress=progress, name=v,
                      config=args2.config, **args2.env_overrides)  # the observation the network was trained on
        ev.to_csv(os.path.join(run_dir, "eval.csv"))
        ev.to_json(os.path.join(run_dir, "eval.json"))
        write_run_record(run_record([ev], policy=v, hyperparameters=dataclasses.asdict(args2)),
                         os.path.join(run_dir, f"{v}.record.json"))
        s = ev.summary()
        print(f"[{v}] test ({len(days)} days, {time.perf_counter() - t0:.1f} s): mean cost "
              f"{s['cost_eur']:.2f} €/day, objective {s['objective_eur']:.2f}, SoC-violation rate "
              f"{s['soc_violation_rate']:.4f}", flush=True)
        results[v] = ev
    if not a.no_rule_based:
        from mmgrid_env.policies import RuleBasedPolicy

        results["rule_based"] = evaluate(RuleBasedPolicy(parallel_env()), days=days, oracle=a.oracle,
                                         progress=progress, name="rule_based")
        cfg = parallel_env(base.get("config", Args.config)).config
        if cfg.obs_price_forecast:  # the same rules with the forecast the learners see: a fair yardstick
            results["rule_based_day_ahead"] = evaluate(RuleBasedPolicy(cfg, reference="day_ahead"), days=days,
                                                       config=cfg, oracle=a.oracle, progress=progress,
                                                       name="rule_based_day_ahead")
    cols = ["n_days", "cost_eur", "objective_eur", "optimality_gap", "soc_violation_rate", "cost_upper_eur",
            "shedding_kwh"]
    table = compare_table(results, columns=cols, reference=None)
    with open(os.path.join(a.out, "comparison.md"), "w") as fh:
        fh.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
