"""Soak test: many steps with random and extreme (limit-hitting) actions, on 4, 8 or 32 microgrids.

Checks that no step raises, that resident memory stays flat after warm-up, and prints the share of steps that
needed a solver fallback (expected: 0), the relaxation gap and the network's power-balance residual against the
bounds the docs state (docs/model.md, "Validation"): the share of steps within each bound, the worst value and
the 99.9th percentile.

    python benchmarks/soak.py [--placement paper|8|32|feeder] [--steps 100000] [--extreme-share 0.3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from mmgrid_env import parallel_env, presets

GAP_BOUND_PU = 1e-6
BALANCE_BOUND_KW = 1e-6
PLACEMENTS = {
    "paper": None,  # the preset's 4 microgrids at buses [1, 2, 5, 24]
    "8": (1, 2, 5, 8, 12, 18, 24, 29),
    "32": tuple(range(1, 33)),  # a microgrid at every bus but the substation's
    "feeder": None,  # the preset "feeder": heterogeneous microgrids at the ends of the full 33-bus feeder
}


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def make_env(placement: str, aggregation: str):
    buses = PLACEMENTS[placement]
    if placement == "feeder":  # the preset: the full feeder with its own load, tariff and sharing
        return parallel_env("feeder")
    if buses is None:
        return parallel_env(opf={"impedance_aggregation": aggregation})
    base = presets["paper"].microgrids
    mgs = [dataclasses.replace(base[k % len(base)], bus=b) for k, b in enumerate(buses)]
    return parallel_env(microgrids=mgs, opf={"impedance_aggregation": aggregation})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placement", choices=sorted(PLACEMENTS), default="paper")
    ap.add_argument("--aggregation", choices=["mean", "sum"], default="mean")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--extreme-share", type=float, default=0.3, help="share of actions at the corners ±1 (±3)")
    ap.add_argument("--warmup", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    env = make_env(args.placement, args.aggregation)
    agents = env.possible_agents
    placement_is_feeder = env.config.opf.topology == "feeder"
    counts = {0: 0, 1: 0, 2: 0}
    repairs = {-1: 0, 0: 0, 1: 0}
    gaps, residuals = [], []
    steps, episodes, exceptions = 0, 0, 0
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
            try:
                _, _, _, _, infos = env.step(actions)
            except Exception:  # noqa: BLE001 - counted: a soak must report, not stop
                exceptions += 1
                break
            info = infos[agents[0]]
            counts[int(info["opf_status"])] += 1
            repairs[int(info["opf_exactness_repair"])] += 1
            gaps.append(info["relaxation_gap_pu"])
            # network balance: what enters the network (microgrids after the OPF; on the full feeder the microgrids'
            # own net, the substation and the feeder's load) is what the lines lose
            if placement_is_feeder:
                inj = sum(infos[a]["p_net_kw"] - infos[a]["p_grid_kw"] - infos[a]["curtailment_kw"]
                          + infos[a]["shedding_kw"] - infos[a]["spill_kw"] for a in agents)
                inj += info["substation_p_kw"] - info["background_load_kw"]
            else:
                inj = sum(infos[a]["p_net_kw"] + infos[a]["delta_p_kw"] - infos[a]["curtailment_kw"]
                          + infos[a]["shedding_kw"] - infos[a]["spill_kw"] for a in agents)
            residuals.append(abs(inj - info["loss_kw"]))
            steps += 1
            if steps == args.warmup:
                rss_after_warmup = rss_mb()
    elapsed = time.perf_counter() - t0
    rss_end = rss_mb()
    gaps, residuals = np.array(gaps), np.array(residuals)
    print(f"placement {args.placement} ({len(agents)} microgrids, {args.aggregation}), seed {args.seed}")
    print(f"{'steps':<44}{steps}")
    print(f"{'episodes (days)':<44}{episodes}")
    print(f"{'wall time (s)':<44}{elapsed:.1f}  ({steps / elapsed:.0f} steps/s)")
    print(f"{'exceptions':<44}{exceptions}")
    print(f"{'OPF optimal (primary solver)':<44}{counts[0]}")
    print(f"{'fallback solver':<44}{counts[1]}  ({counts[1] / steps:.4%})")
    print(f"{'safe dispatch':<44}{counts[2]}  ({counts[2] / steps:.4%})")
    print(f"{'exactness repairs (helped / did not)':<44}{repairs[1]} / {repairs[-1]}")
    for label, values, bound, unit in (("relaxation gap", gaps, GAP_BOUND_PU, "p.u."),
                                       ("balance residual", residuals, BALANCE_BOUND_KW, "kW")):
        print(f"{label + ' <= ' + f'{bound:.0e} ' + unit:<44}{np.mean(values <= bound):.4%} of steps")
        print(f"{label + ' worst / 99.9th pct (' + unit + ')':<44}{values.max():.2e} / "
              f"{np.quantile(values, 0.999):.2e}")
    if rss_after_warmup is not None:
        print(f"{'RSS after warm-up / end (MB)':<44}{rss_after_warmup:.1f} / {rss_end:.1f}  "
              f"(growth {rss_end - rss_after_warmup:+.1f} MB)")


if __name__ == "__main__":
    main()
