"""MAPPO training throughput with the env copies stepped in this process and in worker processes.

Trains the same short run (the ``feeder`` hyper-parameter set unless told, same seed) once per ``--workers`` value,
alternating the values for ``--rounds`` rounds so that a shared machine's load changes hit them alike, and prints
env steps/s (rollouts + updates, the worker start-up included) with each value's ratio to ``workers = 0`` measured
in the same round. It also checks that every value trains the same weights (SHA-256 of the state dict).

    python benchmarks/train_throughput.py [--episodes 640] [--workers 0 2] [--rounds 2] [--hp feeder]
"""

from __future__ import annotations

import argparse
import statistics

from mmgrid_baselines.common import state_dict_sha256, usable_cores
from mmgrid_baselines.mappo import Args, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=640, help="training episodes per run (64 per update)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="env worker processes to compare")
    p.add_argument("--rounds", type=int, default=2, help="rounds (each runs every --workers value once)")
    p.add_argument("--hp", default="feeder", help="hyper-parameter set (mmgrid_baselines.mappo.HYPERPARAMETER_SETS)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    values = sorted(set(a.workers) | {0})
    sps: dict[int, list[float]] = {w: [] for w in values}
    ratios: dict[int, list[float]] = {w: [] for w in values}
    digests: set[str] = set()
    print(f"{a.episodes} episodes of the {a.hp!r} set, seed {a.seed}, {usable_cores()} usable cores")
    for r in range(a.rounds):
        order = values if r % 2 == 0 else values[::-1]
        got = {}
        for w in order:
            res = train(Args.from_preset(a.hp, seed=a.seed, total_episodes=a.episodes, env_workers=w), progress=False)
            got[w] = res.env_steps_per_s
            digests.add(state_dict_sha256(res.agent.state_dict()))
            print(f"  round {r + 1}, workers {w}: {res.env_steps_per_s:.0f} env steps/s ({res.wall_s:.1f} s)")
        for w in values:
            sps[w].append(got[w])
            ratios[w].append(got[w] / got[0])
    print()
    print("| env workers | env steps/s (median) | ratio to 0 workers, same round (median [min, max]) |")
    print("|---:|---:|---:|")
    for w in values:
        rs = ratios[w]
        print(f"| {w} | {statistics.median(sps[w]):.0f} | {statistics.median(rs):.2f} [{min(rs):.2f}, {max(rs):.2f}] |")
    print(f"\nsame weights from every run: {'yes' if len(digests) == 1 else f'NO ({len(digests)} digests)'}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
