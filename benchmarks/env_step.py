"""Env steps per second (paper preset, random actions) next to a naive reference measured in the same run.

The reference is the same model with its OPF rebuilt in cvxpy at every step (``ConicOPF.solve_reference``
without a cached problem). Also splits the default step into three parts: the solver call(s) (``wall_time_s``:
Clarabel's data update and solve), the OPF's own bookkeeping around them (writing the step's vectors, building the
result record), and the env's own work outside ``ConicOPF.solve`` (validation, device models, rewards, dicts,
infos) — the last is what the env adds on top of the OPF.

    python benchmarks/env_step.py [--episodes 40] [--reference-episodes 3] [--feeder]

``--feeder``: the preset ``"feeder"`` (four heterogeneous microgrids at buses [17, 21, 24, 32] of the full case33bw
feeder, its own load, tariff and sharing).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mmgrid_env import parallel_env


def run(env, episodes: int, seed: int = 0):
    """Time every step; returns (step, solver call, whole ConicOPF.solve) wall times in s."""
    rng = np.random.default_rng(seed)
    step_times, solver_times, opf_times = [], [], []
    solve = env.opf.solve
    last = []

    def timed_solve(*args):  # the whole OPF call, as the env sees it
        t = time.perf_counter()
        res = solve(*args)
        last.append(time.perf_counter() - t)
        return res

    env.opf.solve = timed_solve
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        while env.agents:
            actions = {a: rng.uniform(-1, 1, 4).astype(np.float32) for a in env.agents}
            t0 = time.perf_counter()
            env.step(actions)
            step_times.append(time.perf_counter() - t0)
            solver_times.append(env.last_step["opf"].wall_time_s)
            opf_times.append(last.pop())
    env.opf.solve = solve
    return np.array(step_times), np.array(solver_times), np.array(opf_times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40, help="episodes (24 steps) for the default env")
    ap.add_argument("--reference-episodes", type=int, default=3, help="episodes for the naive cvxpy reference")
    ap.add_argument("--feeder", action="store_true", help="the full case33bw feeder instead of the reduced network")
    args = ap.parse_args(argv)
    kw = dict(config="feeder") if args.feeder else {}

    env = parallel_env(**kw)
    run(env, 2)  # warm-up: first solves allocate the solver
    fast, fast_solver, fast_opf = run(env, args.episodes)

    naive = parallel_env(**kw)
    conic = naive.opf
    naive.opf.solve = lambda p, q, c, pg, qg, ren, bg: conic.solve_reference(  # rebuilt every call
        p, q, c, pg, qg, ren, solver="CLARABEL", background_scale=bg)
    slow, _, _ = run(naive, args.reference_episodes)

    rows = [
        ("naive: cvxpy OPF rebuilt every step", slow),
        ("default: ConicOPF (persistent Clarabel)", fast),
    ]
    print(f"{'configuration':<42} {'steps/s':>9} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9}")
    for name, t in rows:
        print(f"{name:<42} {1 / t.mean():>9.1f} {np.median(t) * 1e3:>10.3f} {np.percentile(t, 90) * 1e3:>8.3f} "
              f"{slow.mean() / t.mean():>8.1f}x")
    print()
    parts = [
        ("solver call (Clarabel update + solve)", fast_solver),
        ("OPF bookkeeping (vectors in, result record out)", fast_opf - fast_solver),
        ("env's own work outside ConicOPF.solve", fast - fast_opf),
        ("everything but the solver call", fast - fast_solver),
    ]
    print(f"default step split ({len(fast)} steps)            median µs   p90 µs   mean µs")
    for name, t in parts:
        print(f"  {name:<48} {np.median(t) * 1e6:>7.1f} {np.percentile(t, 90) * 1e6:>8.1f} {t.mean() * 1e6:>9.1f}")


if __name__ == "__main__":
    main()
