"""Python overhead of ``ConicOPF.solve``: its wall time minus that of the bare Clarabel ``solver.solve()`` inside it.

Optionally against an older version of ``mmgrid_env/opf.py`` (``--against REV``, read with ``git show``), the two
interleaved call by call on the same realistic instances (benchmarks/opf.py's), so that load changes on a shared
machine hit both alike; the results of the two are also compared field by field (0 = bit for bit the same).

    python benchmarks/opf_overhead.py [--n 2000] [--against 47c6c43]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from opf import PLACEMENTS, instances  # noqa: E402

import mmgrid_env.opf as current  # noqa: E402
from mmgrid_env.config import presets  # noqa: E402
from mmgrid_env.network import build_network  # noqa: E402

FIELDS = ("objective_eur", "losses_kw", "loss_cost_eur", "voltage_penalty_eur", "relaxation_gap_pu", "status_code",
          "voltage_violation_pu", "mg_lists", "network_lists")


def load_version(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:mmgrid_env/opf.py"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    src = src.replace("from .config", "from mmgrid_env.config").replace("from .network", "from mmgrid_env.network")
    path = os.path.join(tempfile.mkdtemp(), "opf_at_rev.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("opf_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["opf_at_rev"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


class _Timed:
    def __init__(self, solver):
        self.solver, self.t = solver, 0.0

    def solve(self):
        t0 = time.perf_counter()
        sol = self.solver.solve()
        self.t = time.perf_counter() - t0
        return sol

    def __getattr__(self, name):
        return getattr(self.solver, name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="calls per version and placement")
    ap.add_argument("--against", default=None, help="git revision of mmgrid_env/opf.py to interleave with")
    args = ap.parse_args(argv)
    versions = {"current": current}
    if args.against:
        versions[args.against] = load_version(args.against)
    paper = presets["paper"]
    print(f"# load avg {os.getloadavg()[0]:.1f}; {args.n} calls per version; medians (µs)")
    for label, buses in PLACEMENTS.items():
        mgs = [dataclasses.replace(paper.microgrids[i % 4], bus=b) for i, b in enumerate(buses)]
        limits = tuple(np.array([getattr(m, f) for m in mgs], float)
                       for f in ("grid_p_min_kw", "grid_p_max_kw", "grid_q_min_kvar", "grid_q_max_kvar"))
        net = build_network(buses, aggregation=paper.opf.impedance_aggregation)
        insts = [(p.tolist(), q.tolist(), c, pg.tolist(), qg.tolist())  # as the env passes them: lists
                 for p, q, c, pg, qg in instances(mgs, 500, np.random.default_rng(0))]
        ops = {k: mod.ConicOPF(net, paper.opf, *limits) for k, mod in versions.items()}
        for o in ops.values():
            for inst in insts[:20]:
                o.solve(*inst)
            o._clarabel = _Timed(o._clarabel)
        over, total = {k: [] for k in ops}, {k: [] for k in ops}
        n_diff = 0
        gc.disable()
        for i in range(args.n):
            inst = insts[i % len(insts)]
            res = {}
            for k in (list(ops) if i % 2 else list(ops)[::-1]):
                t0 = time.perf_counter()
                res[k] = ops[k].solve(*inst)
                t = time.perf_counter() - t0
                total[k].append(t)
                over[k].append(t - ops[k]._clarabel.t)
            if len(res) == 2:
                a, b = res.values()
                n_diff += any(repr(getattr(a, f)) != repr(getattr(b, f)) for f in FIELDS)
        gc.enable()
        for k in ops:
            print(f"{label:<28} {k:<10} overhead {1e6 * np.median(over[k]):7.1f}  (p10 {1e6 * np.quantile(over[k], 0.1):6.1f})"
                  f"  whole call {1e6 * np.median(total[k]):7.1f}")
        if len(ops) == 2:
            print(f"{label:<28} calls whose results differ between the versions: {n_diff}")


if __name__ == "__main__":
    main()
