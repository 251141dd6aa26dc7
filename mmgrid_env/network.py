"""The inter-microgrid network, built at run time from pandapower's ``case33bw`` (docs/model.md, "Network").

A :class:`Network` is plain data: nodes in parent-before-child order (node 0 is the root), one edge per
non-root node (from its parent), per-unit impedances on the feeder's own base, and the feeder path each edge
stands for. ``topology="reduced"`` keeps the microgrid buses plus the branching buses that the tree needs;
``topology="feeder"`` keeps every bus of the feeder with its own lines and its own load (``background_p_kw``,
``background_q_kvar``), from ``case33bw`` or any radial pandapower net (one external grid; a substation
transformer right below it is replaced by its secondary bus as the root; meshes, other transformers and bus-bus
switches are refused with a :class:`NetworkError`). The OPF runs on the reduced topology; the feeder topology is
the network layer of the planned full-feeder model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Network", "build_network", "NetworkError"]


class NetworkError(ValueError):
    """Bad bus list or network option; the message names the bus/option."""


@dataclass(frozen=True)
class Network:
    """A radial network of microgrid nodes.

    Attributes:
        buses: pandapower bus index of each node; node 0 is the root (nearest the substation).
        parent: parent node of each node (-1 for the root); parents come before children.
        r_pu, x_pu: impedance of the edge into node k (index k-1 for k = 1..n-1), per unit.
        r_ohm, x_ohm: the same in ohm.
        edge_lines: pandapower line indices each edge stands for (feeder path, parent side first).
        mg_node: node index of each microgrid (in microgrid order).
        aggregation: ``"mean"`` or ``"sum"`` (``"feeder"`` topology: every edge is one line, ``"sum"``).
        base_kv, base_mva: the feeder's own per-unit base (12.66 kV, pandapower's ``sn_mva``).
        topology: ``"reduced"`` or ``"feeder"``.
        background_p_kw, background_q_kvar: the feeder's own load at each node at nominal (kW, kVar; zeros for
            the reduced topology, whose nodes carry no load of their own).
    """

    buses: tuple[int, ...]
    parent: np.ndarray
    r_pu: np.ndarray
    x_pu: np.ndarray
    r_ohm: np.ndarray
    x_ohm: np.ndarray
    edge_lines: tuple[tuple[int, ...], ...]
    mg_node: np.ndarray
    aggregation: str
    base_kv: float
    base_mva: float
    topology: str = "reduced"
    background_p_kw: np.ndarray | None = None
    background_q_kvar: np.ndarray | None = None

    def __post_init__(self):
        for name in ("background_p_kw", "background_q_kvar"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.buses)))

    @property
    def n_nodes(self) -> int:
        return len(self.buses)

    @property
    def n_edges(self) -> int:
        return len(self.buses) - 1

    @property
    def edge_from(self) -> np.ndarray:
        """Parent node of each edge (edge k-1 goes parent[k] → k)."""
        return self.parent[1:]

    @property
    def edge_to(self) -> np.ndarray:
        return np.arange(1, self.n_nodes)

    def incidence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C_out, C_in, G), shapes (nodes, edges), (nodes, edges), (nodes, microgrids): C_out[j, e] = 1 if edge e
        leaves node j, C_in[j, e] = 1 if it enters j, G[j, m] = 1 if microgrid m sits at node j. The node balance
        (eq. 11) reads C_out·P − C_in·(P − r·l) = G·(injections)."""
        n, E, M = self.n_nodes, self.n_edges, len(self.mg_node)
        c_out, c_in, g = np.zeros((n, E)), np.zeros((n, E)), np.zeros((n, M))
        c_out[self.edge_from, np.arange(E)] = 1.0
        c_in[self.edge_to, np.arange(E)] = 1.0
        g[self.mg_node, np.arange(M)] = 1.0
        return c_out, c_in, g

    @property
    def z_base_ohm(self) -> float:
        return self.base_kv ** 2 / self.base_mva

    @property
    def i_base_ka(self) -> float:
        return self.base_mva / (math.sqrt(3) * self.base_kv)

    @property
    def base_kw(self) -> float:
        return self.base_mva * 1000.0

    def table(self) -> str:
        """The reduced topology as a printable table: edge, buses, impedances, the feeder path it stands for."""
        rows = [f"{'edge':>4}  {'from_bus':>8}  {'to_bus':>6}  {'r_ohm':>8}  {'x_ohm':>8}  {'r_pu':>9}  "
                f"{'x_pu':>9}  feeder lines ({self.aggregation})"]
        for k in range(self.n_edges):
            child = k + 1
            rows.append(f"{k:>4}  {self.buses[self.parent[child]]:>8}  {self.buses[child]:>6}  "
                        f"{self.r_ohm[k]:>8.4f}  {self.x_ohm[k]:>8.4f}  {self.r_pu[k]:>9.6f}  {self.x_pu[k]:>9.6f}  "
                        f"{list(self.edge_lines[k])}")
        mgs = ", ".join(f"mg_{m}@bus{self.buses[n]}" for m, n in enumerate(self.mg_node))
        rows.append(f"{self.topology} topology, root bus {self.buses[0]} (v fixed); microgrids: {mgs}; "
                    f"base {self.base_kv} kV, {self.base_mva} MVA")
        if self.topology == "feeder":
            rows.append(f"background load {self.background_p_kw.sum():.1f} kW, {self.background_q_kvar.sum():.1f} kVar "
                        f"at nominal, on {int(np.count_nonzero(self.background_p_kw))} buses")
        return "\n".join(rows)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.table()

    def to_pandapower(self, p_inj_kw: Sequence[float] | None = None, q_inj_kvar: Sequence[float] | None = None,
                      background: bool = True, root_v_pu: float = 1.0):
        """A pandapower net of this topology, for AC validation.

        Root node = ``ext_grid`` at ``root_v_pu``; node injections (kW/kVar, generation positive) become ``sgen``s;
        with ``background`` the nodes' own loads at nominal become ``load``s (leave it off when the injections
        already hold them).
        """
        import pandapower as pp

        net = pp.create_empty_network(sn_mva=self.base_mva)
        for b in self.buses:
            pp.create_bus(net, vn_kv=self.base_kv, name=f"bus{b}")
        for k in range(self.n_edges):
            pp.create_line_from_parameters(net, from_bus=int(self.parent[k + 1]), to_bus=k + 1, length_km=1.0,
                                           r_ohm_per_km=float(self.r_ohm[k]), x_ohm_per_km=float(self.x_ohm[k]),
                                           c_nf_per_km=0.0, max_i_ka=99999.0)
        pp.create_ext_grid(net, bus=0, vm_pu=root_v_pu, va_degree=0.0)
        for j in np.flatnonzero(((self.background_p_kw != 0) | (self.background_q_kvar != 0)) & background):
            pp.create_load(net, bus=int(j), p_mw=self.background_p_kw[j] / 1000.0,
                           q_mvar=self.background_q_kvar[j] / 1000.0)
        if p_inj_kw is not None:
            q = np.zeros(self.n_nodes) if q_inj_kvar is None else np.asarray(q_inj_kvar, float)
            for j, (p, qq) in enumerate(zip(np.asarray(p_inj_kw, float), q)):
                pp.create_sgen(net, bus=j, p_mw=p / 1000.0, q_mvar=qq / 1000.0)
        return net


@functools.lru_cache(maxsize=1)
def _case33bw():
    """pandapower's case33bw, built once per process (building it takes ~1 s); only read, never modified."""
    import pandapower.networks as pn

    return pn.case33bw()


def _feeder_tree(net) -> tuple[dict[int, int], dict[int, int]]:
    """Parent bus and the line into each bus of a radial pandapower feeder, rooted at its substation.

    One in-service external grid; if a transformer hangs right below it (and nothing else), its secondary bus is
    the root (the substation's on-load tap changer holds that bus's voltage). Lines with an open line switch are
    out. Refused with a :class:`NetworkError` naming the element: several external grids, other transformers,
    closed bus-bus switches, buses of another voltage level, and meshes (a line that closes a loop).
    """
    grids = net.ext_grid[net.ext_grid.in_service]
    if len(grids) != 1:
        raise NetworkError(f"the feeder needs exactly one in-service ext_grid (its substation), got {len(grids)}")
    root = int(grids.bus.iloc[0])
    lines = net.line[net.line.in_service]
    trafos = net.trafo[net.trafo.in_service] if len(net.trafo) else net.trafo
    if len(trafos):
        at_root = trafos[trafos.hv_bus == root]
        if len(trafos) > 1 or len(at_root) != 1 or ((lines.from_bus == root) | (lines.to_bus == root)).any():
            raise NetworkError(f"transformers {trafos.index.tolist()}: only one substation transformer right below "
                               f"the ext_grid is supported (its secondary becomes the root)")
        root = int(at_root.lv_bus.iloc[0])
    switches = net.switch if len(net.switch) else None
    if switches is not None:
        closed_bb = switches[(switches.et == "b") & switches.closed]
        if len(closed_bb):
            raise NetworkError(f"closed bus-bus switches {closed_bb.index.tolist()} are not supported")
        open_lines = set(switches[(switches.et == "l") & ~switches.closed].element.astype(int))
        lines = lines[~lines.index.isin(open_lines)]
    kv = float(net.bus.vn_kv.loc[root])
    adj: dict[int, list[tuple[int, int]]] = {int(b): [] for b in net.bus.index}
    for idx, a, b in zip(lines.index, lines.from_bus, lines.to_bus):
        adj[int(a)].append((int(b), int(idx)))
        adj[int(b)].append((int(a), int(idx)))
    parent, via = {root: -1}, {root: -1}
    stack = [root]
    while stack:
        u = stack.pop()
        for w, li in adj[u]:
            if li == via[u]:
                continue
            if w in parent:
                raise NetworkError(f"meshed network: line {li} closes a loop between buses {u} and {w}; open a "
                                   f"switch (set the line out of service) to make it radial")
            if float(net.bus.vn_kv.loc[w]) != kv:
                raise NetworkError(f"bus {w} is at {net.bus.vn_kv.loc[w]} kV, the feeder at {kv} kV: one voltage "
                                   f"level only")
            parent[w], via[w] = u, li
            stack.append(w)
    return parent, via


def build_network(mg_buses: Sequence[int], aggregation: str = "mean", topology: str = "reduced",
                  feeder=None) -> Network:
    """Build the network that connects microgrids at ``mg_buses`` (pandapower bus indices of ``case33bw``).

    Args:
        mg_buses: one distinct bus per microgrid.
        aggregation: ``"mean"`` (the paper: average of the path's branch impedances) or ``"sum"``.
        topology: ``"reduced"`` (the microgrid buses and the branching buses the tree needs) or ``"feeder"``
            (every bus reachable from the substation, each line its own edge, each bus with its own load).
        feeder: a pandapower net to use instead of ``case33bw()`` (radial; see :func:`_feeder_tree` for what is
            supported and refused).
    """
    if topology not in ("reduced", "feeder"):
        raise NetworkError(f"topology must be 'reduced' or 'feeder', got {topology!r}")
    if aggregation not in ("mean", "sum"):
        raise NetworkError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
    if feeder is None:
        feeder = _case33bw()
    parent_bus, via_line = _feeder_tree(feeder)
    buses = [int(b) for b in mg_buses]
    if not buses:
        raise NetworkError("mg_buses is empty: need at least one microgrid bus")
    if len(set(buses)) != len(buses):
        raise NetworkError(f"duplicate microgrid buses in {buses}")
    for b in buses:
        if b not in parent_bus:
            raise NetworkError(f"unknown bus {b}: not a bus of the feeder connected to its substation (case33bw: "
                               f"buses 0..32, pandapower's 0-based indices)")

    if topology == "feeder":
        return _full_feeder(feeder, parent_bus, via_line, buses)

    def ancestors(b: int) -> list[int]:  # b, parent(b), ..., root
        out = [b]
        while parent_bus[out[-1]] != -1:
            out.append(parent_bus[out[-1]])
        return out

    anc = {b: ancestors(b) for b in buses}
    # Closure under lowest common ancestors: the branching buses the reduced tree needs.
    nodes = set(buses)
    for i, a in enumerate(buses):
        set_a = set(anc[a])
        for b in buses[i + 1:]:
            nodes.add(next(x for x in anc[b] if x in set_a))
    all_anc = {x: ancestors(x) for x in nodes}
    order = sorted(nodes, key=lambda x: (len(all_anc[x]), x))  # by depth: parents before children
    pos = {b: k for k, b in enumerate(order)}
    parent = np.full(len(order), -1, dtype=np.int64)
    r_ohm, x_ohm, lines = [], [], []
    for k, b in enumerate(order[1:], start=1):
        path = []
        u = b
        while True:
            path.append(via_line[u])
            u = parent_bus[u]
            if u in pos:
                break
        parent[k] = pos[u]
        path = path[::-1]
        r = feeder.line.loc[path, "r_ohm_per_km"].to_numpy() * feeder.line.loc[path, "length_km"].to_numpy()
        x = feeder.line.loc[path, "x_ohm_per_km"].to_numpy() * feeder.line.loc[path, "length_km"].to_numpy()
        agg = np.mean if aggregation == "mean" else np.sum
        r_ohm.append(float(agg(r)))
        x_ohm.append(float(agg(x)))
        lines.append(tuple(int(p) for p in path))
    if sum(1 for x in order if parent[pos[x]] == -1) != 1:  # pragma: no cover - closure guarantees one root
        raise NetworkError("reduced network is not a tree")
    base_kv = float(feeder.bus.vn_kv.iloc[0])
    base_mva = float(feeder.sn_mva)
    z_base = base_kv ** 2 / base_mva
    r_ohm_a, x_ohm_a = np.array(r_ohm, dtype=float), np.array(x_ohm, dtype=float)
    return Network(buses=tuple(order), parent=parent, r_pu=r_ohm_a / z_base, x_pu=x_ohm_a / z_base,
                   r_ohm=r_ohm_a, x_ohm=x_ohm_a, edge_lines=tuple(lines),
                   mg_node=np.array([pos[b] for b in buses], dtype=np.int64), aggregation=aggregation,
                   base_kv=base_kv, base_mva=base_mva)


def _full_feeder(feeder, parent_bus: dict[int, int], via_line: dict[int, int], mg_buses: list[int]) -> Network:
    """Every bus reachable from the substation as a node (by depth), every line an edge, the loads per node."""
    depth = {}
    for b in parent_bus:
        d, u = 0, b
        while parent_bus[u] != -1:
            u, d = parent_bus[u], d + 1
        depth[b] = d
    order = sorted(parent_bus, key=lambda b: (depth[b], b))
    pos = {b: k for k, b in enumerate(order)}
    parent = np.array([-1] + [pos[parent_bus[b]] for b in order[1:]], dtype=np.int64)
    lines = [via_line[b] for b in order[1:]]
    line = feeder.line.loc[lines]
    r_ohm = (line.r_ohm_per_km * line.length_km / line.parallel).to_numpy(float)
    x_ohm = (line.x_ohm_per_km * line.length_km / line.parallel).to_numpy(float)
    bg_p, bg_q = np.zeros(len(order)), np.zeros(len(order))
    loads = feeder.load[feeder.load.in_service]
    for b, p_mw, q_mvar, scale in zip(loads.bus, loads.p_mw, loads.q_mvar, loads.scaling):
        if int(b) in pos:
            bg_p[pos[int(b)]] += 1000.0 * p_mw * scale
            bg_q[pos[int(b)]] += 1000.0 * q_mvar * scale
    base_kv = float(feeder.bus.vn_kv.loc[order[0]])
    base_mva = float(feeder.sn_mva)
    z_base = base_kv ** 2 / base_mva
    return Network(buses=tuple(order), parent=parent, r_pu=r_ohm / z_base, x_pu=x_ohm / z_base, r_ohm=r_ohm,
                   x_ohm=x_ohm, edge_lines=tuple((int(li),) for li in lines),
                   mg_node=np.array([pos[b] for b in mg_buses], dtype=np.int64), aggregation="sum",
                   base_kv=base_kv, base_mva=base_mva, topology="feeder", background_p_kw=bg_p,
                   background_q_kvar=bg_q)
