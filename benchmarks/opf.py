"""Time per OPF solve: the naive cvxpy rebuild, the DPP-compiled cvxpy problem, and the ConicOPF fast path.

Methods (the same OPF, the same instances):
  cvxpy rebuild/<S>   ``solve_cvxpy_opf(..., problem=None)``: build + canonicalise + solve every call
  cvxpy DPP/<S>       ``build_cvxpy_opf`` once, then ``solve_cvxpy_opf(..., problem=...)``: parameters only
  fast/clarabel       ``ConicOPF.solve`` (persistent Clarabel solver, data updated in place) — the default
  fast/ecos           ``ConicOPF.solve`` with ``OPFConfig(solver="ecos")`` (conic data re-used, ECOS called anew)

The fast paths and the DPP-compiled methods are timed interleaved, instance by instance in rotating order (a load
change on the shared machine hits them alike); the rebuild methods, 40 instances, run afterwards.

Instances are realistic steps of the paper preset: for a random (day, hour) of the bundled SMARD data each microgrid
draws random device set-points (MT, ESS, its own grid trade P_MG/Q_MG within half its limits) and its net injection
follows the lower layer (docs/model.md) (p = PV + WT + MT + ESS + P_MG − load, q = Q_MG − Q_load); the price is that hour's price. The
8-microgrid placement cycles the four preset microgrids. Timings are wall-clock per call, single process; the
``vs fast`` column is the median over the fast path's median, and ``wall/solver`` is the median of the call's wall
time over Clarabel's own reported solve time (``OPFResult.solver_time_s``), and ``wall/bare`` the same over the
wall time of the bare ``solver.solve()`` call inside the fast path: the Python overhead of the fast path.

    python benchmarks/opf.py [--n-solves 500] [--n-rebuild 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
import warnings

import numpy as np

from mmgrid_env.config import presets
from mmgrid_env.data import load_dataset
from mmgrid_env.network import build_network
from mmgrid_env.opf import ConicOPF, build_cvxpy_opf, solve_cvxpy_opf

PLACEMENTS = {"paper [1,2,5,24]": (1, 2, 5, 24), "8 MGs [1,2,5,8,12,18,24,29]": (1, 2, 5, 8, 12, 18, 24, 29)}


def instances(mgs, n: int, rng: np.random.Generator):
    """n realistic (p_kw, q_kvar, price, p_grid_kw, q_grid_kvar) steps for the microgrid configs ``mgs``."""
    data = load_dataset()
    out = []
    for _ in range(n):
        d, h = rng.integers(data.n_days), rng.integers(24)
        p, q, pg, qg = (np.empty(len(mgs)) for _ in range(4))
        for i, mg in enumerate(mgs):
            load = mg.load_peak_kw * data.load_pu[d, h]
            mt = rng.uniform(mg.mt_min_kw, mg.mt_max_kw)
            ess = rng.uniform(-mg.ess_charge_max_kw, mg.ess_discharge_max_kw)
            pg[i] = 0.5 * rng.uniform(mg.grid_p_min_kw, mg.grid_p_max_kw)
            qg[i] = 0.5 * rng.uniform(mg.grid_q_min_kvar, mg.grid_q_max_kvar)
            p[i] = mg.pv_kwp * data.pv_pu[d, h] + mg.wt_kw * data.wind_pu[d, h] + mt + ess + pg[i] - load
            q[i] = qg[i] - load * np.tan(np.arccos(mg.power_factor))
        out.append((p, q, float(data.price_eur_per_kwh[d, h]), pg, qg))
    return out


class _TimedSolver:
    """Wraps the fast path's persistent Clarabel solver and records the wall time of each bare ``solve()``."""

    def __init__(self, solver):
        self._solver, self.times = solver, []

    def solve(self):
        t0 = time.perf_counter()
        sol = self._solver.solve()
        self.times.append(time.perf_counter() - t0)
        return sol

    def __getattr__(self, name):
        return getattr(self._solver, name)


def timed(fn, insts):
    times, objs, extra = [], [], []
    for inst in insts:
        t0 = time.perf_counter()
        r = fn(*inst)
        times.append(time.perf_counter() - t0)
        objs.append(r["objective_eur"] if isinstance(r, dict) else r.objective_eur)
        extra.append(r)
    return np.array(times), np.array(objs), extra


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-solves", type=int, default=500, help="solves per method (fast path and DPP)")
    ap.add_argument("--n-rebuild", type=int, default=40, help="solves for the (slow) rebuild-every-call methods")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="numba cannot be imported")
    warnings.filterwarnings("ignore", message="Solution may be inaccurate")  # cvxpy/ECOS, counted in Δobj

    import clarabel
    import cvxpy
    import ecos

    print(f"# OPF solve time per call — python {platform.python_version()}, cvxpy {cvxpy.__version__}, "
          f"clarabel {clarabel.__version__}, ecos {ecos.__version__}, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print(f"# n-solves {args.n_solves} (rebuild: {args.n_rebuild}), warm-up {args.warmup}, seed {args.seed}")
    header = (f"{'placement':<28} {'method':<22} {'median ms':>9} {'p90 ms':>8} {'vs fast':>8} "
              f"{'wall/solver':>11} {'wall/bare':>10} {'max |Δobj| €':>12}")
    print(header)
    print("-" * len(header))
    paper = presets["paper"]
    for label, buses in PLACEMENTS.items():
        mgs = [dataclasses.replace(paper.microgrids[i % 4], bus=b) for i, b in enumerate(buses)]
        limits = tuple(np.array([getattr(m, f) for m in mgs], float)
                       for f in ("grid_p_min_kw", "grid_p_max_kw", "grid_q_min_kvar", "grid_q_max_kvar"))
        cfg = paper.opf
        net = build_network(buses, aggregation=cfg.impedance_aggregation)
        rng = np.random.default_rng(args.seed)
        warm = instances(mgs, args.warmup, rng)
        insts = instances(mgs, args.n_solves, rng)
        slow = insts[: args.n_rebuild]
        fast = ConicOPF(net, cfg, *limits)
        fast_ecos = ConicOPF(net, dataclasses.replace(cfg, solver="ecos", fallback_solver="clarabel"), *limits)
        dpp = {s: build_cvxpy_opf(net, cfg, len(buses)) for s in ("ECOS", "CLARABEL")}

        def cvx(solver, problem):
            return lambda p, q, c, pg, qg: solve_cvxpy_opf(net, cfg, p, q, c, limits, pg, qg, solver=solver,
                                                           problem=problem)

        methods = [
            ("fast/clarabel", fast.solve, insts),
            ("fast/ecos", fast_ecos.solve, insts),
            ("cvxpy DPP/CLARABEL", cvx("CLARABEL", dpp["CLARABEL"]), insts),
            ("cvxpy DPP/ECOS", cvx("ECOS", dpp["ECOS"]), insts),
            ("cvxpy rebuild/CLARABEL", cvx("CLARABEL", None), slow),
            ("cvxpy rebuild/ECOS", cvx("ECOS", None), slow),
        ]
        results = {}
        for name, fn, data in methods:
            timed(fn, warm)  # first compile (DPP) and solver set-up are not what a step costs
        fast._clarabel = bare = _TimedSolver(fast._clarabel)
        # The fast path and the DPP methods are interleaved instance by instance (in rotating order), so that
        # load changes on a shared machine hit all of them alike; the rebuild methods run after them.
        paired = [m for m in methods if m[2] is insts]
        per = {name: ([], [], []) for name, _, _ in paired}
        for i, inst in enumerate(insts):
            for j in range(len(paired)):
                name, fn, _ = paired[(i + j) % len(paired)]
                t, o, r = timed(fn, [inst])
                per[name][0].append(t[0])
                per[name][1].append(o[0])
                per[name][2].append(r[0])
        for name, (t, o, r) in per.items():
            results[name] = (np.array(t), np.array(o), r)
        for name, fn, data in methods:
            if data is not insts:
                results[name] = timed(fn, data)
        fast._clarabel = bare._solver
        t_fast, obj_fast, res_fast = results["fast/clarabel"]
        med_fast = float(np.median(t_fast))
        assert all(r.status_code == 0 for r in res_fast), "the fast path needed a fallback"
        for name, _, data in methods:
            t, obj, res = results[name]
            dobj = float(np.max(np.abs(obj - obj_fast[: len(obj)])))
            ratio = "" if name != "fast/clarabel" else \
                f"{np.median([tt / r.solver_time_s for tt, r in zip(t, res)]):.2f}"
            ratio_bare = "" if name != "fast/clarabel" else f"{np.median(t / np.array(bare.times)):.2f}"
            print(f"{label:<28} {name:<22} {1e3 * np.median(t):>9.3f} {1e3 * np.quantile(t, 0.9):>8.3f} "
                  f"{np.median(t) / med_fast:>7.1f}x {ratio:>11} {ratio_bare:>10} {dobj:>12.2e}")
        gap = max(r.relaxation_gap_pu for r in res_fast)
        for what, ts in (("(Clarabel solve_time)", [r.solver_time_s for r in res_fast]),
                         ("(bare solver.solve())", bare.times)):
            print(f"{label:<28} {what:<22} {1e3 * np.median(ts):>9.3f} {1e3 * np.quantile(ts, 0.9):>8.3f}"
                  + (f"   fast path worst relaxation gap {gap:.1e} p.u." if what.startswith("(bare") else ""))
    print("Notes: cvxpy/ECOS runs at abstol=reltol=feastol=1e-9 (solve_cvxpy_opf), cvxpy/CLARABEL at its defaults,\n"
          "the fast path at the tolerances set in opf.py. Δobj: against the fast path on the same instances.\n"
          "wall/solver: the fast path's call over Clarabel's reported solve_time (OPFResult.solver_time_s);\n"
          "wall/bare: over the measured wall time of the bare solver.solve() inside it. Clarabel's solve_time\n"
          "exceeds that bare call: it includes the solver's one-off setup time, so wall/solver can be < 1.")


if __name__ == "__main__":
    main()
