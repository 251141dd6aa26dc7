"""How much of the value of the network a trained learner captures on the feeder preset.

For each MAPPO checkpoint (one per seed, trained on ``--env-preset feeder``): its cost on the split with the preset
as it is (sharing on) and with sharing off (the same policy, each microgrid settling alone at the substation), so
"€ saved by sharing" is what sharing saves on the learner's own imbalances (it includes the imbalance mark-up
those would pay without sharing, so it is not the same measure as the oracle's value of the network, oracle
without sharing − oracle, which re-optimises). Also its normalised score, the energy it shares, losses and hours at a voltage limit. With ``--record
PATH`` the seeds' per-day results are written as one run record (``mmgrid_env.protocol``).

    python benchmarks/feeder_learners.py runs/mappo/feeder_default_seed*/mappo.pt [--split validation|test]
        [--record docs/records/v1/feeder/test/mappo.record.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from mmgrid_baselines.mappo import policy_from_checkpoint
from mmgrid_env import evaluate
from mmgrid_env.config import make_config
from mmgrid_env.protocol import aggregate, run_record, write_run_record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--split", default="validation")
    p.add_argument("--record", default=None, help="write the seeds' run record here")
    p.add_argument("--policy-name", default="mappo")
    p.add_argument("--notes", default="", help="how the checkpoints were trained (stored in the record)")
    args = p.parse_args()

    cfg = make_config("feeder")
    off = dataclasses.replace(cfg, opf=dataclasses.replace(cfg.opf, sharing=False))
    oracle_res = evaluate("oracle", split=args.split, config=cfg)
    oracle_on, oracle_shared = oracle_res.column("objective_eur"), oracle_res.summary()["shared_kwh"]
    oracle_off = evaluate("oracle", split=args.split, config=off).column("objective_eur")
    value = oracle_off - oracle_on
    print(f"preset 'feeder', {args.split} split ({len(value)} days): value of the network (oracle) "
          f"{value.mean():.2f} €/day, the oracle shares {oracle_shared:.0f} kWh/day")
    print("| seed | objective €/day | normalised score (mean) | shared kWh/day (of the oracle's) | € saved by sharing "
          "/day (its actions settled without sharing − with) | losses kWh/day | h/day at a voltage limit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results, hps = [], None
    for path in args.checkpoints:
        policy, hp, _ = policy_from_checkpoint(path)
        hps = hps or {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(hp).items()}
        on = evaluate(policy, split=args.split, config=cfg, oracle=True, seed=hp.seed, name=args.policy_name)
        policy, _, _ = policy_from_checkpoint(path)  # a fresh copy: no state carried over
        off_obj = evaluate(policy, split=args.split, config=off).column("objective_eur")
        saved = off_obj - on.column("objective_eur")
        m = on.summary()
        print(f"| {hp.seed} | {m['objective_eur']:.2f} | {m['normalised_score']:.3f} | {m['shared_kwh']:.0f} "
              f"({100 * m['shared_kwh'] / oracle_shared:.0f} %) | {saved.mean():.2f} | {m['loss_kwh']:.0f} | "
              f"{m['voltage_limit_hours']:.2f} |", flush=True)
        results.append(on)
    scores = np.array([r.column("normalised_score") for r in results])
    agg = aggregate(scores)
    print(f"\n{len(results)} seed(s): normalised score {json.dumps(agg, default=float)}")
    if args.record:
        write_run_record(run_record(results, policy=args.policy_name, hyperparameters=hps, notes=args.notes), args.record)
        print(f"record: {args.record}")


if __name__ == "__main__":
    main()
