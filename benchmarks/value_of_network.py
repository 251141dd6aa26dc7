"""The value of the network: the oracle's daily cost with sharing off minus with sharing on, against the grid fee.

Four microgrids (the paper preset's ratings) at the ends of the full case33bw feeder (buses [17, 21, 24, 32]),
substation at 1.03 p.u., sharing fee 0.01 €/kWh, on every day of a split (default: the 73 test days). With
``--profiles simbench`` each microgrid has its own SimBench load/PV/wind profile (household, commercial,
agricultural); with ``--profiles paper`` they share the SMARD profiles. Prints one row per grid fee: the mean value
of the network (€/day), the oracle's mean daily cost without the network (sharing off), the value as a share of
that cost (the saving, %), the median of the per-day savings and the energy shared between microgrids (kWh/day). docs/model.md ("The full feeder") records the result.

    python benchmarks/value_of_network.py [--profiles simbench|paper] [--fees 0 0.02 0.04 0.06 0.08 0.1]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from mmgrid_env import presets
from mmgrid_env.config import make_config
from mmgrid_env.oracle import solve_days

FEEDER_BUSES = (17, 21, 24, 32)
SIMBENCH_MIX = (  # (load, PV, wind) columns of the bundled dataset, one row per microgrid
    ("simbench_H0_load_pu", "simbench_pv3_pu", "simbench_wp4_pu"),  # household
    ("simbench_G1_load_pu", "simbench_pv5_pu", "simbench_wp7_pu"),  # commercial
    ("simbench_L0_load_pu", "simbench_pv3_pu", "simbench_wp7_pu"),  # agricultural
    ("simbench_G0_load_pu", "simbench_pv5_pu", "simbench_wp4_pu"),  # commercial
)


def feeder_config(grid_fee: float, sharing: bool, profiles: str):
    mgs = presets["paper"].microgrids
    if profiles == "simbench":
        mgs = tuple(dataclasses.replace(m, load_profile=lp, pv_profile=pp, wind_profile=wp)
                    for m, (lp, pp, wp) in zip(mgs, SIMBENCH_MIX))
    return make_config("paper", microgrids=mgs, microgrid_buses=FEEDER_BUSES,
                       opf=dict(topology="feeder", substation_v_pu=1.03, grid_fee_eur_per_kwh=grid_fee,
                                sharing=sharing, sharing_fee_eur_per_kwh=0.01))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", choices=("simbench", "paper"), default="simbench")
    p.add_argument("--fees", type=float, nargs="+", default=[0.0, 0.02, 0.04, 0.06, 0.08, 0.10])
    p.add_argument("--split", default="test")
    args = p.parse_args()

    print(f"profiles={args.profiles} split={args.split} sharing fee 0.01 €/kWh, substation 1.03 p.u.")
    print(f"{'grid fee €/kWh':>15} {'value €/day':>12} {'cost off €/day':>15} {'saving %':>9} "
          f"{'median %':>9} {'shared kWh/day':>15} {'time s':>7}")
    for fee in args.fees:
        t0 = time.perf_counter()
        on = solve_days(feeder_config(fee, True, args.profiles), split=args.split)
        off = solve_days(feeder_config(fee, False, args.profiles), split=args.split)
        cost_off = np.array([r.objective_eur for r in off])
        value = cost_off - np.array([r.objective_eur for r in on])
        # shared_kw is + bought, − sold per microgrid; hourly steps, so Σ of the bought parts is kWh
        shared_kwh = np.array([np.clip(r.dispatch["shared_kw"], 0, None).sum() for r in on])
        print(f"{fee:>15.3f} {value.mean():>12.1f} {cost_off.mean():>15.1f} "
              f"{100 * value.mean() / cost_off.mean():>9.1f} {100 * np.median(value / cost_off):>9.1f} "
              f"{shared_kwh.mean():>15.0f} {time.perf_counter() - t0:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
