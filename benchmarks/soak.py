"""Soak test: many steps with random and extreme (limit-hitting) actions.

Checks that no step raises, that resident memory stays flat after warm-up, and prints the share of steps that
needed a solver fallback (expected: 0) and the worst relaxation gap.

    python benchmarks/soak.py [--steps 100000] [--extreme-share 0.3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mmgrid_env import parallel_env


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--extreme-share", type=float, default=0.3, help="share of actions at the corners ±1 (±3)")
    ap.add_argument("--warmup", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    env = parallel_env()
    counts = {0: 0, 1: 0, 2: 0}
    worst_gap, steps, episodes = 0.0, 0, 0
    rss_after_warmup = None
    t0 = time.perf_counter()
    while steps < args.steps:
        env.reset(seed=args.seed + episodes, options={"split": "all"})
        episodes += 1
        while env.agents and steps < args.steps:
            actions = {}
            for a in env.agents:
                u = rng.random()
                if u < args.extreme_share / 2:
                    actions[a] = rng.choice([-1.0, 1.0], 4).astype(np.float32)
                elif u < args.extreme_share:
                    actions[a] = rng.choice([-3.0, 3.0], 4).astype(np.float32)  # clipped by the env
                else:
                    actions[a] = rng.uniform(-1, 1, 4).astype(np.float32)
            _, _, _, _, infos = env.step(actions)
            info = infos["mg_0"]
            counts[int(info["opf_status"])] += 1
            worst_gap = max(worst_gap, info["relaxation_gap_pu"])
            steps += 1
            if steps == args.warmup:
                rss_after_warmup = rss_mb()
    elapsed = time.perf_counter() - t0
    rss_end = rss_mb()
    print(f"{'steps':<34}{steps}")
    print(f"{'episodes (days)':<34}{episodes}")
    print(f"{'wall time (s)':<34}{elapsed:.1f}  ({steps / elapsed:.0f} steps/s)")
    print(f"{'exceptions':<34}0")
    print(f"{'OPF optimal (primary solver)':<34}{counts[0]}")
    print(f"{'fallback solver':<34}{counts[1]}  ({counts[1] / steps:.4%})")
    print(f"{'safe dispatch':<34}{counts[2]}  ({counts[2] / steps:.4%})")
    print(f"{'worst relaxation gap (p.u.)':<34}{worst_gap:.2e}")
    if rss_after_warmup is not None:
        print(f"{'RSS after warm-up / end (MB)':<34}{rss_after_warmup:.1f} / {rss_end:.1f}  "
              f"(growth {rss_end - rss_after_warmup:+.1f} MB)")


if __name__ == "__main__":
    main()
