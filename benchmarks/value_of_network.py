"""The value of the network: the oracle's daily cost with sharing off minus with sharing on, against the grid fee.

The preset ``"feeder"`` (four microgrids at the ends of the full case33bw feeder, the feeder's own load, substation
at 1.01 p.u., sharing fee 0.01 €/kWh) on every day of a split (default: the 73 test days), with its grid fee
replaced by each value of ``--fees``. ``--profiles simbench`` is the preset as it is (each microgrid its own SimBench
load / PV / wind profile: household, commercial, agricultural); ``--profiles paper`` gives every microgrid the
SMARD profiles of the paper preset instead. Prints one row per profile set and grid fee: the mean value of the
network (€/day), the oracle's mean daily cost without the network (sharing off), the value as a share of that cost
(the saving, %), the median of the per-day savings and the energy shared between microgrids (kWh/day). With
``--plot PATH`` it also draws the saving against the grid fee (PNG; needs matplotlib). docs/results.md records the
result.

    python benchmarks/value_of_network.py [--profiles simbench paper] [--fees 0 0.0146 0.0292 0.05 0.071 0.0893 0.1214]
        [--plot docs/img/value_of_network.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from mmgrid_env import presets
from mmgrid_env.config import make_config
from mmgrid_env.oracle import solve_days

# The grid fees with a source (docs/model.md, "The feeder preset"): 0.0146 and 0.0292 €/kWh are medium-voltage
# energy charges for long use (German and Luxembourgish price sheets), 0.0710 the Luxembourgish 20 kV charge
# below 3000 h/a (the preset's default), 0.0893 the Luxembourgish low-voltage charge, 0.1214 the German
# household average of 2024.
CITED_FEES = (0.0146, 0.0292, 0.0710, 0.0893, 0.1214)


def feeder_config(grid_fee: float, sharing: bool, profiles: str, sharing_fee: float = 0.01):
    overrides = {}
    if profiles == "paper":
        overrides["microgrids"] = tuple(
            dataclasses.replace(m, load_profile="load_pu", pv_profile="pv_pu", wind_profile="wind_pu")
            for m in presets["feeder"].microgrids)
    return make_config("feeder", opf=dict(grid_fee_eur_per_kwh=grid_fee, sharing=sharing,
                                          sharing_fee_eur_per_kwh=sharing_fee), **overrides)


def plot(rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = {"simbench": "heterogeneous SimBench profiles (the preset)", "paper": "one shared SMARD profile"}
    for prof in dict.fromkeys(r["profiles"] for r in rows):
        pts = sorted((r["fee"], r["saving_pct"]) for r in rows if r["profiles"] == prof)
        ax.plot(*zip(*pts), marker="o", label=labels.get(prof, prof))
    for fee in CITED_FEES:
        ax.axvline(fee, color="0.8", lw=0.8, zorder=0)
    ax.axvline(presets["feeder"].opf.grid_fee_eur_per_kwh, color="0.4", ls="--", lw=1.0, label="preset default")
    ax.axhline(3.0, color="tab:red", ls=":", lw=1.0, label="3 % of the daily cost")
    ax.set_xlabel("grid fee on imports (€/kWh); grey lines: published values")
    ax.set_ylabel("value of the network (% of the cost without sharing)")
    ax.set_title("Value of the network, oracle, 73 test days")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", choices=("simbench", "paper"), nargs="+", default=["simbench"])
    p.add_argument("--fees", type=float, nargs="+", default=[0.0, 0.0146, 0.0292, 0.05, 0.071, 0.0893, 0.1214])
    p.add_argument("--split", default="test")
    p.add_argument("--sharing-fee", type=float, default=0.01, help="€/kWh on energy shared between microgrids")
    p.add_argument("--plot", default=None, help="write the saving against the grid fee as a PNG here")
    args = p.parse_args()

    print(f"preset 'feeder', split={args.split}; sharing fee {args.sharing_fee} €/kWh")
    print(f"{'profiles':>9} {'grid fee €/kWh':>15} {'value €/day':>12} {'cost off €/day':>15} {'saving %':>9} "
          f"{'median %':>9} {'shared kWh/day':>15} {'time s':>7}")
    rows = []
    for prof in args.profiles:
        for fee in args.fees:
            t0 = time.perf_counter()
            on = solve_days(feeder_config(fee, True, prof, args.sharing_fee), split=args.split)
            off = solve_days(feeder_config(fee, False, prof), split=args.split)
            cost_off = np.array([r.objective_eur for r in off])
            value = cost_off - np.array([r.objective_eur for r in on])
            # shared_kw is + bought, − sold per microgrid; hourly steps, so Σ of the bought parts is kWh
            shared_kwh = np.array([np.clip(r.dispatch["shared_kw"], 0, None).sum() for r in on])
            row = dict(profiles=prof, fee=fee, value=value.mean(), cost_off=cost_off.mean(),
                       saving_pct=100 * value.mean() / cost_off.mean(),
                       median_pct=100 * np.median(value / cost_off), shared=shared_kwh.mean())
            rows.append(row)
            print(f"{prof:>9} {fee:>15.4f} {row['value']:>12.1f} {row['cost_off']:>15.1f} {row['saving_pct']:>9.1f} "
                  f"{row['median_pct']:>9.1f} {row['shared']:>15.0f} {time.perf_counter() - t0:>7.0f}", flush=True)
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
