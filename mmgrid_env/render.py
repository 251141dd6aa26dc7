"""``rgb_array`` rendering: the dispatch of the episode so far, drawn headless with matplotlib's Agg backend.

>>> from mmgrid_env import parallel_env
>>> from mmgrid_env.render import render_rgb_array
>>> env = parallel_env(); _ = env.reset(seed=0); history = []
>>> while env.agents:
...     *_, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
...     history.append(infos)
>>> render_rgb_array(history).shape
(720, 960, 3)

One panel per microgrid (stacked steps: PV, WT, MT, ESS and main-grid trade, supply positive, charging and selling negative;
the load as a black line),
then a panel with the price (left axis) and every microgrid's state of charge (right axis). matplotlib is an
optional dependency (``pip install "mmgrid-env[plot]"``); it is imported on the first call, and the pyplot state
machine is never used, so rendering is safe in worker processes and leaves the user's backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["render_rgb_array", "RENDER_KEYS"]

RENDER_KEYS = ("p_pv_kw", "p_wt_kw", "p_mt_kw", "p_ess_kw", "p_grid_kw", "p_load_kw", "soc", "price_eur_per_kwh",
               "hour")
"""The info keys :func:`render_rgb_array` reads (each agent's ``infos[agent]`` from ``env.step``)."""

# (info key, label, colour) of the stacked bars; positive = supply into the microgrid
_BARS = (("p_pv_kw", "PV", "#f2b701"), ("p_wt_kw", "WT", "#3969ac"), ("p_mt_kw", "MT", "#e73f74"),
         ("p_ess_kw", "ESS (+dis/−ch)", "#11a579"), ("p_grid_kw", "grid (+buy/−sell)", "#7f3c8d"))
_HOURS_PER_DAY = 24


def render_rgb_array(history: Sequence[Mapping[str, Mapping[str, float]]], *,
                     agents: Sequence[str] | None = None, width: int = 960, height: int = 720,
                     dpi: int = 100) -> np.ndarray:
    """Draw the dispatch of the steps in ``history`` and return the picture as an ``(height, width, 3)`` uint8 array.

    Args:
        history: one entry per ``env.step`` so far, oldest first: the ``infos`` it returned, i.e. a mapping
            ``{agent: {key: value}}`` with at least the keys in :data:`RENDER_KEYS`. Pass step infos, not the
            infos of ``reset`` (those describe the state before any dispatch). An empty history draws empty axes.
        agents: the agents to draw, in this order (default: the keys of the first entry, in their order).
        width: width of the image in pixels.
        height: height of the image in pixels.
        dpi: the resolution the figure is drawn at (fonts scale with it).

    The x axis covers at least one day (24 steps) so that successive frames of an episode share the same scale.
    Raises ``KeyError`` naming the missing key when an info lacks one of :data:`RENDER_KEYS`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = list(history)
    if agents is None:
        agents = list(history[0]) if history else []
    agents = list(agents)
    for t, infos in enumerate(history):
        for a in agents:
            missing = [k for k in RENDER_KEYS if k not in infos[a]]
            if missing:
                raise KeyError(f"history[{t}][{a!r}] lacks {missing}; render_rgb_array needs {list(RENDER_KEYS)}")

    def series(agent: str, key: str) -> np.ndarray:
        return np.array([float(infos[agent][key]) for infos in history], dtype=float)

    n_steps = len(history)
    x = np.arange(n_steps)
    edges = np.arange(n_steps + 1) - 0.5
    x_max = max(n_steps, _HOURS_PER_DAY)

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.subplots_adjust(left=0.09, right=0.93, bottom=0.07, top=0.92, hspace=0.15)
    canvas = FigureCanvasAgg(fig)
    n_rows = max(len(agents), 1) + 1
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]

    for ax, agent in zip(axes, agents):
        pos, neg = np.zeros(n_steps), np.zeros(n_steps)
        for key, label, colour in _BARS:
            # stacked step areas (one patch per series: far faster than one bar per step)
            v = series(agent, key)
            up, down = np.clip(v, 0.0, None), np.clip(v, None, 0.0)
            if n_steps:
                ax.stairs(pos + up, edges, baseline=pos, fill=True, color=colour, label=label)
                ax.stairs(neg + down, edges, baseline=neg, fill=True, color=colour)
            else:
                ax.plot([], [], color=colour, lw=6, label=label)
            pos += up
            neg += down
        if n_steps:
            ax.stairs(series(agent, "p_load_kw"), edges, baseline=None, color="black", lw=1.5, label="load")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_ylabel(f"{agent}\nkW", fontsize=8)
        ax.tick_params(labelsize=7)
    if agents:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=6, fontsize=7,
                   frameon=False)

    ax_p = axes[-1]
    if n_steps and agents:
        ax_p.stairs(series(agents[0], "price_eur_per_kwh"), edges, baseline=None, color="#cc503e", lw=1.5)
    ax_p.set_ylabel("price\n€/kWh", fontsize=8, color="#cc503e")
    ax_p.tick_params(labelsize=7)
    ax_s = ax_p.twinx()
    for i, agent in enumerate(agents):
        if n_steps:
            ax_s.plot(x, series(agent, "soc"), marker=".", lw=1.0, color=f"C{i}", label=f"SoC {agent}")
    ax_s.set_ylim(0.0, 1.0)
    ax_s.set_ylabel("SoC", fontsize=8)
    ax_s.tick_params(labelsize=7)
    if agents and n_steps:
        ax_s.legend(loc="upper left", ncol=len(agents), fontsize=7, frameon=False)
    ax_p.set_xlim(-0.5, x_max - 0.5)
    ax_p.set_xlabel("step (hour of the episode)", fontsize=8)
    if n_steps:
        first = history[0][agents[0]] if agents else {}
        day = first.get("day")
        title = f"day {int(day)}, " if day is not None else ""
        axes[0].set_title(f"{title}{n_steps} step(s)", fontsize=9)

    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    img = np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
    fig.clear()
    return img
