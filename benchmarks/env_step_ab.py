"""Env steps per second of the current code against an older revision, the two alternated in one run.

The older ``mmgrid_env`` is exported with ``git archive REV`` into a temporary folder; each round runs the same
episodes (same seeds, same random actions) in a fresh subprocess of each version, old and new in turn, so that load
changes on a shared machine hit both alike. Prints each round and the median of the new/old speed ratios
(> 1: the current code is faster), and checks that both versions give the same total reward.

    python benchmarks/env_step_ab.py --against 1061c4a [--rounds 6] [--episodes 30] [--preset paper]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys, time
import numpy as np
import mmgrid_env
from mmgrid_env import parallel_env
episodes, preset = int(sys.argv[1]), sys.argv[2]
env = parallel_env(preset)
rng = np.random.default_rng(0)
acts = [[{a: rng.uniform(-1, 1, 4).astype(np.float32) for a in env.possible_agents} for _ in range(24)]
        for _ in range(episodes)]
env.reset(seed=0)
for a in acts[0][:3]:  # warm-up: the solver is built on the first step
    env.step(a)
total, steps, t_env = 0.0, 0, 0.0
for ep, day in enumerate(acts):
    env.reset(seed=ep)
    for a in day:
        t0 = time.perf_counter()
        _, rew, *_ = env.step(a)
        t_env += time.perf_counter() - t0
        total += sum(rew.values())
        steps += 1
print(json.dumps({"steps_per_s": steps / t_env, "total_reward": total, "file": mmgrid_env.__file__}))
"""


def export(rev: str) -> str:
    data = subprocess.run(["git", "archive", rev, "mmgrid_env"], cwd=ROOT, capture_output=True, check=True).stdout
    path = tempfile.mkdtemp(prefix=f"mmgrid_{rev}_")
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(path, filter="data")
    return path


def run(pythonpath: str, episodes: int, preset: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", WORKER, str(episodes), preset], cwd=tempfile.gettempdir(), env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="git revision of the older code")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--preset", default="paper")
    args = ap.parse_args(argv)
    old_path = export(args.against)
    ratios = []
    print(f"preset {args.preset!r}, {args.episodes} episodes per run, old = {args.against}, new = working tree")
    print(f"{'round':>5} {'old steps/s':>12} {'new steps/s':>12} {'new/old':>8}")
    for k in range(args.rounds):
        pair = [("old", old_path), ("new", ROOT)]
        if k % 2:  # alternate which goes first
            pair.reverse()
        res = {name: run(path, args.episodes, args.preset) for name, path in pair}
        assert res["old"]["file"].startswith(old_path) and res["new"]["file"].startswith(ROOT), res
        ratio = res["new"]["steps_per_s"] / res["old"]["steps_per_s"]
        ratios.append(ratio)
        same = "same reward" if res["new"]["total_reward"] == res["old"]["total_reward"] else (
            f"rewards differ by {res['new']['total_reward'] - res['old']['total_reward']:.3e}")
        print(f"{k:>5} {res['old']['steps_per_s']:>12.0f} {res['new']['steps_per_s']:>12.0f} {ratio:>8.3f}  {same}")
    ratios.sort()
    print(f"median new/old speed ratio: {ratios[len(ratios) // 2]:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
