"""Plots of one day (the paper's Figs. 6 and 7), saved as PNG with matplotlib's Agg canvas.

Input: a **trajectory**, i.e. the per-step infos of one episode. Either

* the dict that :func:`mmgrid_env.evaluate` records (``evaluate(..., record=[day]).trajectories[day]``: keys
  ``steps`` — the 24 ``infos`` dicts ``{agent: info}`` returned by ``env.step`` — and optionally ``initial`` (the
  reset infos, for the SoC at hour 0), ``soc_min``, ``soc_max``, ``date``, ``policy``), or
* a plain list of the 24 ``infos`` dicts.

Functions (each returns the matplotlib ``Figure``; with ``path`` it is also saved as PNG):

* :func:`plot_dispatch` — per microgrid: MT, ESS (+ discharge), grid trade (+ buy) as stacked bars; PV, WT, load
  as lines; the price on a second axis (Fig. 6).
* :func:`plot_soc` — SoC of every battery over the day with its operational limits [soc_min, soc_max].
* :func:`plot_upper_layer` — the upper layer per microgrid: net injection p_i into the network (surplus > 0) and
  the OPF's balancing trade ΔP_i, plus network losses (Fig. 7).
* :func:`plot_day` — all three into a folder.

Uses no pyplot state and never changes the global backend (figures are drawn on ``FigureCanvasAgg``).

Example::

    from mmgrid_env import evaluate
    from mmgrid_env.plotting import plot_day
    res = evaluate("rule_based", days=[184], record=True)
    plot_day(res.trajectories[184], "results/plots", prefix="rule_based_day184")
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

__all__ = ["trajectory_arrays", "plot_dispatch", "plot_soc", "plot_upper_layer", "plot_day"]


def _steps(trajectory) -> tuple[list, dict]:
    if isinstance(trajectory, dict) and "steps" in trajectory:
        return list(trajectory["steps"]), trajectory
    return list(trajectory), {}


def trajectory_arrays(trajectory) -> dict[str, Any]:
    """Per-step infos → arrays: every per-agent key as (T, N), every system key as (T,), plus ``agents``.

    ``soc0`` (N,) is the SoC before the first step when the trajectory holds the reset infos (``initial``),
    else SoC_1 minus nothing known (NaN).
    """
    steps, meta = _steps(trajectory)
    if not steps:
        raise ValueError("empty trajectory: need the per-step infos of an episode")
    agents = list(meta.get("agents") or steps[0].keys())
    keys = list(steps[0][agents[0]].keys())
    out: dict[str, Any] = {"agents": agents}
    for k in keys:
        a = np.array([[float(s[ag][k]) for ag in agents] for s in steps])
        out[k] = a[:, 0] if np.allclose(a, a[:, :1]) and k in ("hour", "day", "cost_upper_eur", "loss_kw",
                                                                 "loss_cost_eur", "voltage_penalty_eur",
                                                                 "cost_total_eur", "team_reward",
                                                                 "relaxation_gap_pu", "opf_status",
                                                                 "price_eur_per_kwh") else a
    init = meta.get("initial")
    out["soc0"] = (np.array([float(init[ag]["soc"]) for ag in agents]) if init
                   else np.full(len(agents), np.nan))
    out["soc_min"], out["soc_max"] = meta.get("soc_min"), meta.get("soc_max")
    out["title"] = " ".join(str(x) for x in (meta.get("policy"), meta.get("date") or (
        f"day {int(out['day'][0])}" if "day" in out else None)) if x)
    return out


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    return fig, axes


def _save(fig, path) -> None:
    if path is not None:
        d = os.path.dirname(os.path.abspath(os.fspath(path)))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=110)


def _stacked(ax, hours, series: Sequence[tuple[str, np.ndarray, str]], width=0.8):
    pos_base = np.zeros_like(hours, dtype=float)
    neg_base = np.zeros_like(hours, dtype=float)
    for label, y, color in series:
        y = np.asarray(y, float)
        pos, neg = np.clip(y, 0, None), np.clip(y, None, 0)
        ax.bar(hours, pos, width, bottom=pos_base, color=color, label=label, alpha=0.85)
        ax.bar(hours, neg, width, bottom=neg_base, color=color, alpha=0.85)
        pos_base += pos
        neg_base += neg


def plot_dispatch(trajectory, path=None, title: str | None = None):
    """Fig. 6: each microgrid's dispatch over the day (kW) with the price (€/kWh)."""
    d = trajectory_arrays(trajectory)
    agents, T = d["agents"], d["p_mt_kw"].shape[0]
    hours = np.arange(T)
    n = len(agents)
    ncols = 2 if n > 1 else 1
    nrows = int(np.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols, 6.5 * ncols, 3.2 * nrows)
    price = d["price_eur_per_kwh"] if d["price_eur_per_kwh"].ndim == 1 else d["price_eur_per_kwh"][:, 0]
    for i, ag in enumerate(agents):
        ax = axes[i // ncols][i % ncols]
        _stacked(ax, hours, [("MT", d["p_mt_kw"][:, i], "tab:red"),
                             ("ESS (+dis)", d["p_ess_kw"][:, i], "tab:green"),
                             ("grid (+buy)", d["p_grid_kw"][:, i], "tab:gray")])
        ax.plot(hours, d["p_pv_kw"][:, i], color="orange", lw=1.8, label="PV")
        ax.plot(hours, d["p_wt_kw"][:, i], color="tab:blue", lw=1.8, label="WT")
        ax.plot(hours, d["p_load_kw"][:, i], color="black", lw=2.0, ls="--", label="load")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(ag)
        ax.set_ylabel("kW")
        ax2 = ax.twinx()
        ax2.step(hours, price, where="mid", color="purple", lw=1.2, label="price")
        ax2.set_ylabel("€/kWh", color="purple")
        if i == 0:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, ncol=2, loc="upper left")
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("hour")
    fig.suptitle(title or f"Dispatch per microgrid {d['title']}".strip())
    _save(fig, path)
    return fig


def plot_soc(trajectory, path=None, soc_limits: tuple | None = None, title: str | None = None):
    """SoC of every battery (after each hour; hour 0 = the initial SoC when known) with [soc_min, soc_max]."""
    d = trajectory_arrays(trajectory)
    agents = d["agents"]
    soc = d["soc"]
    T = soc.shape[0]
    fig, axes = _figure(1, 1, 7.5, 3.8)
    ax = axes[0][0]
    smin, smax = soc_limits if soc_limits is not None else (d["soc_min"], d["soc_max"])
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for i, ag in enumerate(agents):
        y = np.concatenate([[d["soc0"][i]], soc[:, i]])
        c = colors[i % len(colors)]
        ax.plot(np.arange(T + 1), y, marker="o", ms=3, color=c, label=ag)
    if smin is not None:
        lo, hi = np.atleast_1d(smin), np.atleast_1d(smax)
        if np.allclose(lo, lo[0]) and np.allclose(hi, hi[0]):
            ax.axhline(lo[0], color="k", ls="--", lw=1, label="SoC limits")
            ax.axhline(hi[0], color="k", ls="--", lw=1)
        else:
            for i in range(len(agents)):
                c = colors[i % len(colors)]
                ax.axhline(lo[i], color=c, ls=":", lw=1)
                ax.axhline(hi[i], color=c, ls=":", lw=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("hour (end of step)")
    ax.set_ylabel("SoC")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(title or f"State of charge {d['title']}".strip())
    _save(fig, path)
    return fig


def plot_upper_layer(trajectory, path=None, title: str | None = None):
    """Fig. 7: the upper layer per microgrid — net injection p_i (surplus > 0) and balancing trade ΔP_i (kW) —
    and the network losses (kW)."""
    d = trajectory_arrays(trajectory)
    agents = d["agents"]
    T = d["p_net_kw"].shape[0]
    hours = np.arange(T)
    n = len(agents)
    fig, axes = _figure(3, 1, 9.0, 8.0)
    w = 0.8 / n
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for i, ag in enumerate(agents):
        off = (i - (n - 1) / 2) * w
        axes[0][0].bar(hours + off, d["p_net_kw"][:, i], w, color=colors[i % 8], label=ag)
        axes[1][0].bar(hours + off, d["delta_p_kw"][:, i], w, color=colors[i % 8], label=ag)
    axes[0][0].set_ylabel("p_i (kW)")
    axes[0][0].set_title("net injection into the network (surplus > 0)")
    axes[1][0].set_ylabel("ΔP_i (kW)")
    axes[1][0].set_title("OPF balancing trade with the main grid (+ buy)")
    for ax in (axes[0][0], axes[1][0]):
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=8, ncol=n)
    loss = d["loss_kw"] if d["loss_kw"].ndim == 1 else d["loss_kw"][:, 0]
    axes[2][0].step(hours, loss, where="mid", color="k")
    axes[2][0].set_ylabel("losses (kW)")
    axes[2][0].set_xlabel("hour")
    fig.suptitle(title or f"Upper layer {d['title']}".strip())
    _save(fig, path)
    return fig


def plot_day(trajectory, out_dir, prefix: str = "day") -> list[str]:
    """Save the three plots as ``<out_dir>/<prefix>_{dispatch,soc,upper}.png``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{prefix}_{k}.png") for k in ("dispatch", "soc", "upper")]
    plot_dispatch(trajectory, paths[0])
    plot_soc(trajectory, paths[1])
    plot_upper_layer(trajectory, paths[2])
    return paths
