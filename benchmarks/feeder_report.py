"""The feeder preset on the test days: every reference policy, and the voltages without the microgrids' support.

Prints two markdown tables (docs/results.md, "The feeder preset"):

1. **Policies** — oracle, oracle without sharing (each microgrid settles alone at the substation), the rule-based
   policies (and the same rules deciding as if there were no tariff), zero and random on the preset ``"feeder"``: mean objective €/day, normalised score (0 = random,
   1 = oracle), optimality gap (Σ over days of policy − oracle, over Σ |oracle|: daily costs near 0 make per-day
   ratios unstable), energy shared between microgrids, losses, hours with some node at a voltage limit (within 1e-4
   p.u.), the lowest voltage, shedding and spill.
2. **Without support** — pandapower's AC power flow (``runpp``) of every test hour with the microgrids as passive
   loads (MT off, battery idle, PV + WT − load, the load's own reactive power, no reactive support) on the same
   feeder and background load: hours and buses with |V| outside [0.95, 1.05] p.u.

    python benchmarks/feeder_report.py [--split test] [--preset feeder]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from mmgrid_env import evaluate, parallel_env
from mmgrid_env.config import make_config
from mmgrid_env.policies import RuleBasedPolicy, rule_based_day_ahead


def policy_table(cfg, split: str) -> str:
    env = parallel_env(config=cfg)
    off = dataclasses.replace(cfg, opf=dataclasses.replace(cfg.opf, sharing=False))
    no_fees = dataclasses.replace(cfg, opf=dataclasses.replace(cfg.opf, grid_fee_eur_per_kwh=0.0,
                                                               export_fee_eur_per_kwh=0.0))
    results = {
        "oracle": evaluate("oracle", split=split, config=cfg, oracle=True),
        "oracle without sharing": evaluate("oracle", split=split, config=off),
        "rule-based": evaluate(RuleBasedPolicy(env), split=split, config=cfg, oracle=True),
        "rule-based (day-ahead)": evaluate(rule_based_day_ahead(env), split=split, config=cfg, oracle=True),
        # the same rules deciding as if there were no tariff (what they did before they saw it)
        "rule-based, tariff-unaware": evaluate(RuleBasedPolicy(no_fees), split=split, config=cfg, oracle=True),
        "zero": evaluate("zero", split=split, config=cfg, oracle=True),
        "random": evaluate("random", split=split, config=cfg, oracle=True),
    }
    ref = results["oracle"]
    oracle_obj, random_obj = ref.column("oracle_objective_eur"), ref.column("random_objective_eur")
    lines = ["| policy | objective €/day | normalised score | gap Σ | shared kWh/day | losses kWh/day | "
             "h/day at a voltage limit | lowest V p.u. | shed kWh/day | spill kWh/day |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        obj = res.column("objective_eur")
        score = np.mean((random_obj - obj) / (random_obj - oracle_obj))
        gap = (obj.sum() - oracle_obj.sum()) / np.abs(oracle_obj).sum()
        m = res.summary()
        lines.append(f"| {name} | {obj.mean():.2f} | {score:.3f} | {100 * gap:.1f} % | {m['shared_kwh']:.0f} | "
                     f"{m['loss_kwh']:.0f} | {m['voltage_limit_hours']:.2f} | {np.min(res.column('v_min_pu')):.4f} | "
                     f"{m['shedding_kwh']:.2f} | {m['spill_kwh']:.2f} |")
    value = results["oracle without sharing"].column("objective_eur") - oracle_obj
    replay_err = np.abs(ref.column("objective_eur") - oracle_obj)  # the oracle's dispatch replayed through the env
    lines.append("")
    lines.append(f"Oracle replay through the env: worst |env − oracle| {replay_err.max():.2e} €/day "
                 f"({np.max(replay_err / np.abs(oracle_obj)):.2e} of |oracle|) over {len(replay_err)} days.")
    lines.append(f"Value of the network (oracle without sharing − oracle): {value.mean():.2f} €/day = "
                 f"{100 * value.mean() / results['oracle without sharing'].column('objective_eur').mean():.1f} % of "
                 f"the cost without sharing, {100 * value.mean() / oracle_obj.mean():.1f} % of the oracle's; "
                 f"{split} split, {len(value)} days.")
    return "\n".join(lines)


def passive_voltages(cfg, split: str) -> str:
    """Every hour of the split with the microgrids as passive loads, through pandapower's AC power flow."""
    import pandapower as pp

    env = parallel_env(config=cfg)
    net = env.network
    lo, hi = cfg.opf.v_min_pu, cfg.opf.v_max_pu
    mg = net.mg_node
    nominal_kw = float(np.sum(net.background_p_kw))
    hours_low = hours_high = 0
    worst_low, worst_high, n_hours = np.inf, -np.inf, 0
    buses_low: set[int] = set()
    for day in env.dataset.split_days(split):
        obs, _ = env.reset(options={"day": int(day), "split": split})
        while env.agents:
            # the zero-cost passive step: MT off, battery idle, balance traded; read the hour's data from infos
            obs, _, _, _, infos = env.step({a: np.zeros(4, np.float32) for a in env.agents})
            i0 = infos[env.possible_agents[0]]
            scale = i0["background_load_kw"] / nominal_kw
            pn = -scale * net.background_p_kw.copy()
            qn = -scale * net.background_q_kvar.copy()
            for k, a in enumerate(env.possible_agents):
                inf = infos[a]
                pn[mg[k]] += inf["p_pv_kw"] + inf["p_wt_kw"] - inf["p_load_kw"]
                qn[mg[k]] -= inf["q_load_kvar"]
            ppn = net.to_pandapower(pn, qn, background=False, root_v_pu=cfg.opf.substation_v_pu)
            pp.runpp(ppn, tolerance_mva=1e-9, numba=False)
            v = ppn.res_bus.vm_pu.to_numpy()
            n_hours += 1
            worst_low, worst_high = min(worst_low, v.min()), max(worst_high, v.max())
            if v.min() < lo:
                hours_low += 1
                buses_low.update(int(net.buses[j]) for j in np.flatnonzero(v < lo))
            hours_high += int(v.max() > hi)
    return (f"| hours | below {lo} p.u. | above {hi} p.u. | lowest V p.u. | highest V p.u. | buses ever below |\n"
            f"|---:|---:|---:|---:|---:|---|\n"
            f"| {n_hours} | {hours_low} ({100 * hours_low / n_hours:.1f} %) | {hours_high} | {worst_low:.4f} | "
            f"{worst_high:.4f} | {sorted(buses_low)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="feeder")
    p.add_argument("--split", default="test")
    p.add_argument("--skip-passive", action="store_true", help="only the policy table")
    args = p.parse_args()
    cfg = make_config(args.preset)
    t0 = time.perf_counter()
    print(f"preset {args.preset!r}, {args.split} split\n")
    print(policy_table(cfg, args.split), flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)\n")
    if not args.skip_passive:
        t0 = time.perf_counter()
        print("Without the microgrids' support (pandapower runpp, microgrids as passive loads):\n")
        print(passive_voltages(cfg, args.split))
        print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
