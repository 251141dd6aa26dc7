"""Env steps per second (paper preset, random actions) next to a naive reference measured in the same run.

The reference is the same model with its OPF rebuilt in cvxpy at every step (``ConicOPF.solve_reference``
without a cached problem). Also splits the default step into the OPF solve and the env's own overhead.

    python benchmarks/env_step.py [--episodes 40] [--reference-episodes 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mmgrid_env import parallel_env


def run(env, episodes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    step_times, opf_times = [], []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        while env.agents:
            actions = {a: rng.uniform(-1, 1, 4).astype(np.float32) for a in env.agents}
            t0 = time.perf_counter()
            env.step(actions)
            step_times.append(time.perf_counter() - t0)
            opf_times.append(env.last_step["opf"].solve_time_s)
    return np.array(step_times), np.array(opf_times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40, help="episodes (24 steps) for the default env")
    ap.add_argument("--reference-episodes", type=int, default=3, help="episodes for the naive cvxpy reference")
    args = ap.parse_args(argv)

    env = parallel_env()
    run(env, 2)  # warm-up: first solves allocate the solver
    fast, fast_opf = run(env, args.episodes)

    naive = parallel_env()
    conic = naive.opf
    naive.opf.solve = lambda p, q, c, pg, qg: conic.solve_reference(p, q, c, pg, qg)  # rebuilt every call
    slow, slow_opf = run(naive, args.reference_episodes)

    overhead = fast - fast_opf
    rows = [
        ("naive: cvxpy OPF rebuilt every step", slow),
        ("default: ConicOPF (persistent Clarabel)", fast),
    ]
    print(f"{'configuration':<42} {'steps/s':>9} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9}")
    for name, t in rows:
        print(f"{name:<42} {1 / t.mean():>9.1f} {np.median(t) * 1e3:>10.3f} {np.percentile(t, 90) * 1e3:>8.3f} "
              f"{slow.mean() / t.mean():>8.1f}x")
    print()
    print(f"default step split: OPF solve median {np.median(fast_opf) * 1e6:.0f} µs, "
          f"env overhead outside the OPF median {np.median(overhead) * 1e6:.0f} µs "
          f"(p90 {np.percentile(overhead, 90) * 1e6:.0f} µs); steps measured: {len(fast)} default, {len(slow)} naive")


if __name__ == "__main__":
    main()
