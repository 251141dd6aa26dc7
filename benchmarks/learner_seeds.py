"""A trained learner's seeds on one split: per-seed cost, gap and normalised score, their aggregate, a run record.

Give one MAPPO (``mappo.pt``) or AP-DQN (``model.pt``) checkpoint per seed, all trained on the same preset; each is
evaluated on that preset's ``--split`` days (mean actions, the oracle for the gap and the normalised score). The
seeds' IQM of the normalised score with its 95 % stratified-bootstrap CI is what the protocol reports
(``mmgrid_env.protocol.aggregate``); ``--record PATH`` writes the seeds' per-day results as one run record, from
which ``python -m mmgrid_env.protocol`` builds the tables. On the feeder preset,
``benchmarks/feeder_learners.py`` adds the value-of-the-network columns.

    python benchmarks/learner_seeds.py runs/mappo/paper_default_seed*/mappo.pt --split validation
        [--record docs/records/v1/paper_day_ahead/validation/mappo.record.json --notes "how they were trained"]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mmgrid_baselines import load_policy
from mmgrid_env import evaluate
from mmgrid_env.data import SPLITS
from mmgrid_env.protocol import aggregate, run_record, write_run_record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="one checkpoint per seed, same learner and preset")
    p.add_argument("--split", default="validation", choices=list(SPLITS))
    p.add_argument("--record", default=None, help="write the seeds' run record here")
    p.add_argument("--policy-name", default=None, help="name in the record and tables (default: the learner's)")
    p.add_argument("--notes", default="", help="how the checkpoints were trained (stored in the record)")
    a = p.parse_args(argv)

    loaded = [load_policy(c) for c in a.checkpoints]
    kinds = {(x.learner, x.env_preset, json.dumps(x.env_overrides, sort_keys=True)) for x in loaded}
    if len(kinds) > 1:
        p.error(f"the checkpoints differ in learner or preset: {sorted(kinds)}; give one learner on one preset")
    seeds = [x.seed for x in loaded]
    if len(set(seeds)) < len(seeds):
        p.error(f"two checkpoints have the same seed: {seeds}")
    first = loaded[0]
    name = a.policy_name or first.learner
    print(f"{name} on preset {first.env_preset!r}, {a.split} split, {len(loaded)} seed(s)")
    print("| seed | objective €/day | optimality gap (of the oracle) | normalised score (mean) | SoC-violation rate "
          "| s |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    for x in loaded:
        t0 = time.perf_counter()
        r = evaluate(x.policy, split=a.split, config=x.env_preset, oracle=True, seed=x.seed, name=name,
                     progress=False, **x.env_overrides)
        m = r.summary()
        print(f"| {x.seed} | {m['objective_eur']:.2f} | {m['optimality_gap']:.1%} | {m['normalised_score']:.3f} | "
              f"{m['soc_violation_rate']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
        results.append(r)
    objective = np.array([r.column("objective_eur").mean() for r in results])
    agg = aggregate(np.array([r.column("normalised_score") for r in results]))
    print(f"\nobjective {objective.mean():.2f} ± {objective.std(ddof=1) if len(objective) > 1 else 0.0:.2f} €/day "
          f"(mean ± sd over seeds); normalised score IQM {agg['iqm']:.3f} "
          f"[{agg['iqm_ci_low']:.3f}, {agg['iqm_ci_high']:.3f}]")
    if a.record:
        write_run_record(run_record(results, policy=name, hyperparameters=first.hyperparameters, notes=a.notes),
                         a.record)
        print(f"record: {a.record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
