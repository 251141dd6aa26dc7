"""Upper layer: the second-order-cone relaxed branch-flow OPF between microgrids (eq. 3, 11–17, 22; docs/model.md).

Given each microgrid's net injection (p_i, q_i) from the lower layer, the OPF decides balancing trades with the
main grid (ΔP_i = ΔP⁺ − ΔP⁻, ΔQ_i, within what is left of the trade limits), explicit curtailment and load
shedding, and the network flows. Variables are per unit on the feeder's base:

    v_j   squared voltage magnitude         l_e   squared current of edge e = (i → j)
    P_e, Q_e  sending-end flows             ΔP⁺, ΔP⁻, ΔQ⁺, ΔQ⁻, curt, shed, q-slack ≥ 0, voltage slack ≥ 0

    node balance   Σ_out P − (P_in − r·l_in) = p_j + ΔP_j − curt_j + shed_j              (eq. 11)
                   Σ_out Q − (Q_in − x·l_in) = q_j + ΔQ_j + qslack⁺_j − qslack⁻_j         (eq. 12)
    voltage drop   v_j = v_i − 2(r·P_e + x·Q_e) + (r² + x²)·l_e                            (eq. 13)
    cone           ‖(2P_e, 2Q_e, l_e − v_i)‖₂ ≤ l_e + v_i                                  (eq. 3/14)
    limits         v_min² − slack ≤ v_j ≤ v_max² + slack, l_e ≤ l_max, trade headroom      (eq. 15–17)
    objective (€)  w_t·Σ r·l·S_base·Δt + Σ(π⁺ΔP⁺ − π⁻ΔP⁻)Δt + c_q·Σ|ΔQ|Δt + VOLL·Σshed·Δt
                   + c_curt·Σcurt·Δt + c_qs·Σ|qslack|Δt + c_v·Σ voltage slack·Δt           (eq. 22 + balancing)

There is one formulation, written twice: as conic data (:class:`ConicOPF`, the fast path: the matrix is built
once, each step only rewrites the cost and right-hand-side vectors and re-solves a persistent Clarabel solver)
and as a cvxpy DPP problem (:func:`build_cvxpy_opf`, the readable reference). Tests check that both agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from math import sqrt
from operator import add, itemgetter
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp

from .config import OPFConfig
from .network import Network

__all__ = ["OPFResult", "MicrogridBalance", "ConicOPF", "balancing_prices", "loss_weight", "reactive_cost", "step_prices",
           "build_cvxpy_opf",
           "solve_cvxpy_opf", "STATUS_OPTIMAL", "STATUS_FALLBACK_SOLVER", "STATUS_SAFE_DISPATCH"]

STATUS_OPTIMAL = 0
"""The primary solver found the optimum."""
STATUS_FALLBACK_SOLVER = 1
"""The primary solver failed; the fallback solver found the optimum."""
STATUS_SAFE_DISPATCH = 2
"""Both solvers failed; every imbalance was settled with the main grid at balancing prices (no network flows)."""


def balancing_prices(price_eur_per_kwh: float, kappa: float) -> tuple[float, float]:
    """(π⁺, π⁻): an extra purchase costs π⁺ ≥ max(c, 0); an extra sale earns π⁻ ≤ c (docs/model.md)."""
    c = float(price_eur_per_kwh)
    pi_up = c + kappa * abs(c) if c >= 0 else kappa * abs(c)
    pi_dn = c - kappa * abs(c)
    return pi_up, pi_dn


def step_prices(price_eur_per_kwh: float, cfg: OPFConfig) -> tuple[float, float, float, float, float]:
    """Every price of the upper layer's objective for one hour, in one place (the per-step OPF, its cvxpy
    reference and the oracle all use it): (π⁺, π⁻, w, c_q, c_qs) — the balancing prices (with the retail tariff's
    grid fee added to π⁺ and its export fee taken from π⁻), the loss weight, the reactive cost and the reactive
    slack's cost ``reactive_slack_cost_factor · c_q`` (€/kWh, €/kVArh)."""
    pi_up, pi_dn = balancing_prices(price_eur_per_kwh, cfg.balancing_kappa)
    pi_up, pi_dn = pi_up + cfg.grid_fee_eur_per_kwh, pi_dn - cfg.export_fee_eur_per_kwh  # the retail tariff
    c_q = reactive_cost(price_eur_per_kwh, cfg)
    w = loss_weight(price_eur_per_kwh, cfg.loss_price_floor_eur_per_kwh, pi_dn, cfg.loss_price_margin_eur_per_kwh)
    return pi_up, pi_dn, w, c_q, cfg.reactive_slack_cost_factor * c_q


def sharing_prices(price_eur_per_kwh: float, pi_up: float, pi_dn: float, cfg: OPFConfig) -> tuple[float, float]:
    """What sharing changes per kWh against the balancing prices: a kWh bought from a neighbour costs c + fee
    instead of π⁺ (c + fee − π⁺), a kWh sold to one earns c instead of π⁻ (π⁻ − c, a cost: negative = a gain)."""
    c = float(price_eur_per_kwh)
    return c + cfg.sharing_fee_eur_per_kwh - pi_up, pi_dn - c


def loss_weight(price_eur_per_kwh: float, floor_eur_per_kwh: float, pi_dn_eur_per_kwh: float | None = None,
                margin_eur_per_kwh: float = 0.0) -> float:
    """w_t = max(c_t, floor, margin − π⁻_t): losses always cost something, and more than exporting a kWh costs
    (−π⁻ > 0 when c < 0), so burning energy in fictitious losses is never cheaper than selling it — neither for a
    surplus in the hour nor for energy bought at a negative price (docs/model.md, "The rule behind the prices")."""
    w = max(float(price_eur_per_kwh), floor_eur_per_kwh)
    if pi_dn_eur_per_kwh is not None:
        w = max(w, margin_eur_per_kwh - pi_dn_eur_per_kwh)
    return w


def reactive_cost(price_eur_per_kwh: float, cfg: OPFConfig) -> float:
    """c_q = rel·|c_t| + abs (€/kVArh)."""
    return cfg.reactive_cost_rel * abs(float(price_eur_per_kwh)) + cfg.reactive_cost_abs_eur_per_kvarh


class MicrogridBalance(NamedTuple):
    """What the OPF decided at each microgrid, one list of floats per field (one entry per microgrid). Each field
    is the ``infos[agent]`` key of the same name: balancing cost €, ΔP kW (+ buys), ΔQ kVar (+ imports),
    curtailment kW, shedding kW, spill kW, reactive slack kVar (+ supplied), voltage p.u. at the microgrid's
    node."""

    cost_balancing_eur: list
    delta_p_kw: list
    delta_q_kvar: list
    curtailment_kw: list
    shedding_kw: list
    spill_kw: list
    """Surplus that neither curtailment (of the microgrid's own generation only) nor its export headroom could
    absorb, priced at VOLL."""
    q_slack_kvar: list
    v_pu: list
    shared_kw: list
    """Full feeder with sharing: energy bought from (+) or sold to (−) the other microgrids through the feeder, a
    part of ΔP settled at c + fee / c instead of the balancing prices; 0 otherwise."""
    dlmp_eur_per_kwh: list
    """Distribution locational marginal price at the microgrid's node (€/kWh): what one kWh more consumed there
    would cost the upper layer this hour (the dual of the node's power balance) — balancing price, losses and
    voltage limits included. The balancing price π⁺ when no solver answered (safe dispatch)."""


@dataclass
class OPFResult:
    """What one OPF solve reports. Powers in kW/kVar (generation/injection positive), costs in €, voltages p.u.

    The arrays (per microgrid: ``delta_p_kw`` … ``mg_v_pu``; per node/edge: ``v_pu``, ``p_flow_kw``, ``q_flow_kvar``,
    ``current_ka``) are built on first access from plain lists: the env's step reads the lists, and building a dozen
    tiny arrays every step cost more than the rest of the result.
    """

    status: str
    status_code: int
    solver: str
    objective_eur: float
    loss_cost_eur: float
    voltage_penalty_eur: float
    losses_kw: float
    relaxation_gap_pu: float
    """max over edges of l − (P² + Q²)/v_from, per unit of the feeder's base (0 = the relaxation is exact)."""
    voltage_violation_pu: float
    """Largest violation of the squared-voltage limits (p.u.²), 0 when they hold."""
    wall_time_s: float
    """Wall time of the solver call(s), including a fallback and an exactness repair."""
    solver_time_s: float = 0.0
    """The solver's own reported solve time (the last solver used), a part of ``wall_time_s``."""
    iterations: int = 0
    errors: list = field(default_factory=list)
    """Messages of the solvers that failed before the answer (empty on a normal step)."""
    mg_lists: MicrogridBalance = field(default=MicrogridBalance(*((),) * 10), repr=False, compare=False)
    """Per microgrid, by name, as lists of floats — the source of the per-microgrid arrays."""
    network_lists: tuple = field(default=((), (), (), (), 1.0, 1.0), repr=False, compare=False)
    """(v, l, P, Q) in the solver's per unit, then its power base (kW) and current base (kA)."""
    substation_p_kw: float = 0.0
    """Full feeder: the active power the substation delivers into the feeder (kW; negative: the feeder exports).
    0 on the reduced network, whose microgrids trade at their own connections."""
    background_p_kw: float = 0.0
    """Full feeder: the feeder's own load this hour (kW), Σ over its buses."""
    v_min_pu: float = 1.0
    """Lowest voltage magnitude over the network's nodes (p.u.)."""
    v_max_pu: float = 1.0
    """Highest voltage magnitude over the network's nodes (p.u.)."""
    exactness_repair: int = 0
    """1: the first answer's relaxation gap exceeded ``ConicOPF.exactness_tol_pu`` and a re-solve with losses priced
    above VOLL gave this (exact) answer; −1: tried, not better; 0: not needed."""

    @cached_property
    def mg_balancing_cost_eur(self) -> np.ndarray:
        """Per microgrid: its ΔP, ΔQ, curtailment, shedding and reactive-slack costs (€)."""
        return np.array(self.mg_lists.cost_balancing_eur)

    @cached_property
    def delta_p_kw(self) -> np.ndarray:
        """Balancing trade with the main grid decided by the OPF (kW, + buys)."""
        return np.array(self.mg_lists.delta_p_kw)

    @cached_property
    def delta_q_kvar(self) -> np.ndarray:
        """Reactive balancing trade (kVar, + imports)."""
        return np.array(self.mg_lists.delta_q_kvar)

    @cached_property
    def curtailment_kw(self) -> np.ndarray:
        return np.array(self.mg_lists.curtailment_kw)

    @cached_property
    def shedding_kw(self) -> np.ndarray:
        return np.array(self.mg_lists.shedding_kw)

    @cached_property
    def spill_kw(self) -> np.ndarray:
        """Surplus beyond curtailment (generation only) and export headroom (kW, priced at VOLL)."""
        return np.array(self.mg_lists.spill_kw)

    @cached_property
    def q_slack_kvar(self) -> np.ndarray:
        """Reactive power beyond the ΔQ limits (+ supplied, − absorbed); zero unless the limits bind."""
        return np.array(self.mg_lists.q_slack_kvar)

    @cached_property
    def mg_v_pu(self) -> np.ndarray:
        """Voltage magnitude at each microgrid's node (p.u.)."""
        return np.array(self.mg_lists.v_pu)

    @cached_property
    def dlmp_eur_per_kwh(self) -> np.ndarray:
        """Nodal price at each microgrid (€/kWh, see :class:`MicrogridBalance`)."""
        return np.array(self.mg_lists.dlmp_eur_per_kwh)

    @cached_property
    def v_pu(self) -> np.ndarray:
        """Voltage magnitude per node (p.u.)."""
        return np.sqrt(np.maximum(np.array(self.network_lists[0], float), 0.0))

    @cached_property
    def p_flow_kw(self) -> np.ndarray:
        """Sending-end active power flow per edge (kW)."""
        return np.array(self.network_lists[2], float) * self.network_lists[4]

    @cached_property
    def q_flow_kvar(self) -> np.ndarray:
        """Sending-end reactive power flow per edge (kVar)."""
        return np.array(self.network_lists[3], float) * self.network_lists[4]

    @cached_property
    def current_ka(self) -> np.ndarray:
        """Current magnitude per edge (kA)."""
        return np.sqrt(np.array(self.network_lists[1], float)) * self.network_lists[5]


_new_balance = tuple.__new__  # the NamedTuple's own __new__ re-checks its arguments: slower on the hot path


class _FewGetter:
    """``itemgetter`` for 0 or 1 index that returns a tuple (a class, not a lambda: the OPF must pickle)."""

    __slots__ = ("indices",)

    def __init__(self, indices):
        self.indices = tuple(indices)

    def __call__(self, seq):
        return tuple(seq[i] for i in self.indices)

    def __reduce__(self):
        return (_FewGetter, (self.indices,))


def _getter(indices):
    """``operator.itemgetter(*indices)`` that always returns a tuple (also for 0 or 1 index)."""
    indices = list(indices)
    if len(indices) >= 2:
        return itemgetter(*indices)
    return _FewGetter(indices)


class _Affine:
    """An affine expression of the solver's variables x and the step's data z (build time only):
    Σ a_k·x_k + Σ c_k·z_k + const."""

    __slots__ = ("x", "z", "c")

    def __init__(self, x=None, z=None, c=0.0):
        self.x, self.z, self.c = dict(x or {}), dict(z or {}), float(c)

    def __add__(self, other):
        if not isinstance(other, _Affine):
            return _Affine(self.x, self.z, self.c + other)
        out = _Affine(self.x, self.z, self.c + other.c)
        for d_out, d_in in ((out.x, other.x), (out.z, other.z)):
            for k, a in d_in.items():
                d_out[k] = d_out.get(k, 0.0) + a
        return out

    __radd__ = __add__

    def __mul__(self, a):
        return _Affine({k: a * v for k, v in self.x.items()}, {k: a * v for k, v in self.z.items()}, a * self.c)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other


class ConicOPF:
    """The OPF as conic data, built once; each :meth:`solve` rewrites only the cost and right-hand side.

    The conic problem is an exact, smaller rewrite of the formulation in the module docstring (the same feasible
    decisions, the same optimum; :func:`build_cvxpy_opf` writes the original and the tests compare the two):

    - the root's voltage is the constant 1, not a variable fixed by an equality row; its limit violation (none
      unless the limits exclude 1 p.u.) is a constant penalty;
    - curtailment and shedding are one variable y = shed − curt ∈ [−max(p, 0), max(−p, 0)]: one of the two is
      always bounded to zero, so y is one of them, and its cost is c_curt·(−y) or VOLL·y depending on the sign
      of p (the cost vector changes every step anyway);
    - ΔQ and the reactive slack are one variable u (the total reactive outlet) with its cost in epigraph form:
      c_q·t, t ≥ max(u, −u, k·u − (k−1)·ΔQ⁺_max, −k·u − (k−1)·ΔQ⁻_max), k = reactive_slack_cost_factor ≥ 1;
      that maximum is exactly min over the split of |ΔQ| + k·|slack|, and the split is ΔQ = clip(u), slack = rest.

    For 8 microgrids: 82 variables and 159 rows instead of 109 and 196, and about half an interior-point iteration
    fewer (docs/performance.md, "The OPF alone").

    Args:
        network: the inter-microgrid network.
        cfg: OPF options (solver, prices, limits).
        grid_p_min_kw, grid_p_max_kw, grid_q_min_kvar, grid_q_max_kvar: each microgrid's trade limits
            with the main grid; the OPF's ΔP/ΔQ use what the lower layer left of them.
        dt_h: step length (h).
    """

    def __init__(self, network: Network, cfg: OPFConfig, grid_p_min_kw: Sequence[float],
                 grid_p_max_kw: Sequence[float], grid_q_min_kvar: Sequence[float],
                 grid_q_max_kvar: Sequence[float], dt_h: float = 1.0):
        self.net, self.cfg, self.dt_h = network, cfg, float(dt_h)
        self.grid_p_min_kw = np.asarray(grid_p_min_kw, float)
        self.grid_p_max_kw = np.asarray(grid_p_max_kw, float)
        self.grid_q_min_kvar = np.asarray(grid_q_min_kvar, float)
        self.grid_q_max_kvar = np.asarray(grid_q_max_kvar, float)
        n, E, M = network.n_nodes, network.n_edges, len(network.mg_node)
        self.n, self.E, self.M = n, E, M
        if not (len(self.grid_p_min_kw) == len(self.grid_p_max_kw) == len(self.grid_q_min_kvar)
                == len(self.grid_q_max_kvar) == M):
            raise ValueError(f"trade limits need one value per microgrid ({M})")
        for name in ("grid_p_min_kw", "grid_p_max_kw", "grid_q_min_kvar", "grid_q_max_kvar"):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)))
            if bad.size:
                raise ValueError(f"{name} of microgrid {int(bad[0])} is not finite: trade limits must be finite")
        for lo, hi in (("grid_p_min_kw", "grid_p_max_kw"), ("grid_q_min_kvar", "grid_q_max_kvar")):
            bad = np.flatnonzero(getattr(self, lo) > getattr(self, hi))
            if bad.size:
                m = int(bad[0])
                raise ValueError(f"microgrid {m}: {lo} {getattr(self, lo)[m]} > {hi} {getattr(self, hi)[m]}")
        if not (math.isfinite(self.dt_h) and self.dt_h > 0):
            raise ValueError(f"dt_h must be finite and > 0, got {dt_h!r}")
        k_qs = float(cfg.reactive_slack_cost_factor)
        if not (k_qs >= 1.0 and cfg.reactive_cost_rel >= 0 and cfg.reactive_cost_abs_eur_per_kvarh >= 0):
            raise ValueError("the OPF needs reactive costs >= 0 and reactive_slack_cost_factor >= 1 (the slack "
                             "beyond the ΔQ limits must not be cheaper than ΔQ)")
        # Numerical scaling: the conic problem is written in per unit of its own power base (default: the sum of
        # the trade limits, 1.3 MVA for the paper preset), so flows are O(1) and l is O(1e-2) instead of O(1e-4)
        # on the feeder's 10 MVA base. Results are reported in kW/kVar/kA, the relaxation gap in p.u. of the
        # feeder's base.
        # Σ of each microgrid's largest trade limit: the scale of both the solver's per-unit base and its objective
        trade_kw = max(float(np.sum(np.maximum(np.abs(self.grid_p_min_kw), np.abs(self.grid_p_max_kw)))), 1.0)
        self.solver_base_mva = float(cfg.solver_base_mva or trade_kw / 1000.0)
        self.base_kw = self.solver_base_mva * 1000.0
        z_base_ohm = network.base_kv ** 2 / self.solver_base_mva
        self.r_pu, self.x_pu = network.r_ohm / z_base_ohm, network.x_ohm / z_base_ohm
        self.i_base_ka = self.solver_base_mva / (math.sqrt(3) * network.base_kv)
        self._gap_to_feeder_pu = (self.solver_base_mva / network.base_mva) ** 2
        r, x = self.r_pu, self.x_pu
        frm, to = network.edge_from, network.edge_to  # edge e: frm[e] -> to[e] (= e + 1), the root is node 0
        mg_node = [int(j) for j in network.mg_node]
        mg_at = {j: m for m, j in enumerate(mg_node)}  # one microgrid per node at most (network.py)
        # the step's data z (solver per unit), 9 blocks of M: p, q, the trade headroom left for ΔP⁺, ΔP⁻, ΔQ⁺, ΔQ⁻,
        # the curtailment bound (the microgrid's renewable output), the shedding bound max(−p, 0) and the spill
        # bound max(p, 0)
        Z = {name: [_Affine(z={k * M + m: 1.0}) for m in range(M)]
             for k, name in enumerate(("p", "q", "buy_room", "sell_room", "q_import_room", "q_export_room",
                                       "curtail_max", "shed_max", "spill_max"))}
        # the full feeder (topology "feeder") adds: each microgrid's physical injection into its bus (p − P_grid, less
        # its bus's background load) and reactive injection (q less the bus's background load), and the background
        # load of every other bus (as −P, −Q)
        self.feeder = network.topology == "feeder"
        self.n_z = 9 * M + (2 * M + 2 * (n - 1) if self.feeder else 0)
        if self.feeder:
            k0 = 9 * M
            Z["g"] = [_Affine(z={k0 + m: 1.0}) for m in range(M)]
            Z["qg"] = [_Affine(z={k0 + M + m: 1.0}) for m in range(M)]
            Z["bgp"] = [None] + [_Affine(z={k0 + 2 * M + j - 1: 1.0}) for j in range(1, n)]
            Z["bgq"] = [None] + [_Affine(z={k0 + 2 * M + n - 1 + j - 1: 1.0}) for j in range(1, n)]
            if 0 in mg_at:
                raise ValueError("on the full feeder the root is the substation: no microgrid can sit at its bus")
        # --- variables
        self.ix: dict[str, list] = {}
        self._sl: dict[str, slice] = {}  # the same, as slices of x
        n_var = 0

        def new(name, size):
            nonlocal n_var
            self.ix[name] = list(range(n_var, n_var + size))
            self._sl[name] = slice(n_var, n_var + size)
            n_var += size
            return [_Affine({i: 1.0}) for i in self.ix[name]]

        rows_eq, rows_nn, rows_soc = [], [], []
        self._p_balance_rows: list[int] = [0] * M  # per microgrid (not node order): the rows whose duals price it
        self._p_settle_rows: list[int] = [0] * M
        v0_sq = cfg.substation_v_pu ** 2
        V = [_Affine(c=v0_sq)] + new("v", n - 1)  # the root's voltage is the substation's set-point
        L, Pf, Qf = new("l", E), new("P", E), new("Q", E)
        dpu, dpd = new("dpu", M), new("dpd", M)
        CUR, SHD = new("cur", M), new("shd", M)  # curtailment of the microgrid's own generation, load shedding
        U = new("u", M)  # ΔQ + reactive slack
        T = new("t", M)  # epigraph of the reactive cost, in units of c_q
        SVH, SVL = [None] + new("v_slack_hi", n - 1), [None] + new("v_slack_lo", n - 1)
        SPL = new("spill", M)  # surplus that neither curtailment (generation only) nor export headroom absorbs
        self.sharing = bool(cfg.sharing) and self.feeder
        if self.sharing:  # the parts of ΔP⁺ / ΔP⁻ bought from / sold to other microgrids through the feeder
            SIN, SOUT = new("share_in", M), new("share_out", M)
        S = [_Affine(c=max(0.0, v0_sq - cfg.v_max_pu ** 2, cfg.v_min_pu ** 2 - v0_sq))]  # the root's violation
        S += [SVH[j] + SVL[j] for j in range(1, n)]
        self.n_var = n_var
        # node balances (eq. 11, 12): what leaves node j through the network = its injection
        for j in range(n):
            if self.feeder and j == 0:
                continue  # the substation: its injection is free (the feeder's only connection to the main grid)
            p_out = sum((Pf[e] for e in range(E) if frm[e] == j), _Affine())
            q_out = sum((Qf[e] for e in range(E) if frm[e] == j), _Affine())
            for e in range(E):
                if to[e] == j:
                    p_out = p_out - Pf[e] + r[e] * L[e]
                    q_out = q_out - Qf[e] + x[e] * L[e]
            m = mg_at.get(j)
            if m is None:
                rows_eq += [p_out - Z["bgp"][j], q_out - Z["bgq"][j]] if self.feeder else [p_out, q_out]
                continue
            self._p_balance_rows[m] = len(rows_eq)  # its dual is the microgrid's nodal price (DLMP)
            if self.feeder:
                # physically, the microgrid injects its own net (its trades come through the substation) ...
                rows_eq.append(p_out - (Z["g"][m] - CUR[m] + SHD[m] - SPL[m]))
                rows_eq.append(q_out - (Z["qg"][m] + U[m]))
                # ... and ΔP settles what it actually takes beyond its schedule: ΔP + p − curt + shed − spill = 0
                self._p_settle_rows[m] = len(rows_eq)  # p enters both rows (b = +p there, −p here)
                rows_eq.append(dpu[m] - dpd[m] + Z["p"][m] - CUR[m] + SHD[m] - SPL[m])
                continue
            rows_eq.append(p_out - (Z["p"][m] + dpu[m] - dpd[m] - CUR[m] + SHD[m] - SPL[m]))  # p + ΔP − c + s − spill
            rows_eq.append(q_out - (Z["q"][m] + U[m]))  # q + ΔQ + reactive slack
        if self.sharing:  # what the microgrids buy from each other, they sell to each other
            rows_eq.append(sum(SIN, _Affine()) - sum(SOUT, _Affine()))
        # voltage drop (eq. 13)
        for e in range(E):
            i, j = int(frm[e]), int(to[e])
            rows_eq.append(V[j] - (V[i] - 2 * r[e] * Pf[e] - 2 * x[e] * Qf[e] + (r[e] ** 2 + x[e] ** 2) * L[e]))
        # inequalities (≤ 0)
        for m in range(M):
            rows_nn += [-dpu[m], dpu[m] - Z["buy_room"][m], -dpd[m], dpd[m] - Z["sell_room"][m]]  # eq. 17
            rows_nn += [-CUR[m], CUR[m] - Z["curtail_max"][m], -SHD[m], SHD[m] - Z["shed_max"][m], -SPL[m],
                        SPL[m] - Z["spill_max"][m]]
            rows_nn += [U[m] - T[m], -U[m] - T[m]]
            if self.sharing:
                rows_nn += [-SIN[m], SIN[m] - dpu[m], -SOUT[m], SOUT[m] - dpd[m]]
            if k_qs > 1.0:
                rows_nn += [k_qs * U[m] - T[m] - (k_qs - 1) * Z["q_import_room"][m],
                            -k_qs * U[m] - T[m] - (k_qs - 1) * Z["q_export_room"][m]]
        v_hi, v_lo = cfg.v_max_pu ** 2, cfg.v_min_pu ** 2
        for j in range(1, n):  # eq. 16, softened
            rows_nn += [-SVH[j], -SVL[j], V[j] - SVH[j] - v_hi, -V[j] - SVL[j] + v_lo]
        self.l_max_pu = None
        if cfg.current_limit_ka is not None:  # eq. 15
            self.l_max_pu = (cfg.current_limit_ka / self.i_base_ka) ** 2
            rows_nn += [L[e] - self.l_max_pu for e in range(E)]
        # second-order cones (eq. 3/14): (l + v_i, 2P, 2Q, l − v_i) in the cone, i.e. −(·) as a row expression
        for e in range(E):
            i = int(frm[e])
            rows_soc += [-(L[e] + V[i]), -2.0 * Pf[e], -2.0 * Qf[e], -(L[e] - V[i])]
        self.m_eq, self.m_nonneg = len(rows_eq), len(rows_nn)
        # --- conic data: A x + s = b, s in the cones; a row expression E: A = E's x part, b = −(E's rest)
        rows = rows_eq + rows_nn + rows_soc
        self.m = len(rows)
        ri, ci, vals, zr, zc, zv = [], [], [], [], [], []
        self.b_const = np.zeros(self.m)
        for k, ex in enumerate(rows):
            for col, a in ex.x.items():
                if a != 0.0:
                    ri.append(k), ci.append(col), vals.append(a)
            for col, a in ex.z.items():
                if a != 0.0:
                    zr.append(k), zc.append(col), zv.append(-a)
            self.b_const[k] = -ex.c
        self.A = sp.csc_matrix((vals, (ri, ci)), shape=(self.m, n_var))
        Bz = sp.csr_matrix((zv, (zr, zc)), shape=(self.m, self.n_z))
        self._b_rows = np.unique(zr)  # the rows that change with the step's data
        # --- objective: scaled to order one for the solver: € per (typical trade volume at 0.1 €/kWh)
        self.obj_scale_eur = trade_kw * 0.1 * self.dt_h
        self._q_unit = u = self.base_kw * self.dt_h / self.obj_scale_eur  # €/kWh → scaled cost per p.u.
        # q = q_const + q_of_price @ [w, π⁺, −π⁻, c_q]
        self.q_const = np.zeros(n_var)
        self.q_const[self.ix["v_slack_hi"] + self.ix["v_slack_lo"]] = cfg.voltage_penalty_eur_per_pu_h * self.dt_h / self.obj_scale_eur
        self.q_const[self.ix["cur"]] = cfg.curtailment_cost_eur_per_kwh * u
        self.q_const[self.ix["shd"] + self.ix["spill"]] = cfg.voll_eur_per_kwh * u  # spill is priced like shedding
        self.q_of_price = np.zeros((n_var, 6))
        self.q_of_price[self.ix["l"], 0] = self.r_pu * u
        self.q_of_price[self.ix["dpu"], 1] = u
        self.q_of_price[self.ix["dpd"], 2] = u
        self.q_of_price[self.ix["t"], 3] = u
        if self.sharing:  # relative to ΔP's balancing prices: c + fee − π⁺ per kWh bought, π⁻ − c per kWh sold
            self.q_of_price[self.ix["share_in"], 4] = u
            self.q_of_price[self.ix["share_out"], 5] = u
        self._clarabel = None
        self.exactness_tol_pu = 1e-6
        """A step whose relaxation gap exceeds this (p.u. of the feeder's base) is re-solved once (exactness repair)."""
        self._chain = (cfg.solver,) + ((cfg.fallback_solver,) if cfg.fallback_solver not in ("none", cfg.solver) else ())
        self._init_step_maps(cfg, Bz, v_lo, v_hi, frm, mg_node)

    def _init_step_maps(self, cfg, Bz, v_lo, v_hi, frm, mg_node):
        """The per-step maps in plain Python: the vectors have ~100 entries, and a numpy call costs about 1 µs.

        Every entry of the step's data z, of q and of b is one coefficient times one input (plus a constant), so a
        step is a few list comprehensions and one C-level gather (``operator.itemgetter``). The values are bit for
        bit those of the matrix-vector products they replace (``z_map @ inputs + offset``, ``q_of_price @ prices +
        q_const``, ``b_base + b_of_z @ z``): a dot product with a single nonzero term is that one product.
        """
        M = self.M
        # z, 9 blocks of M (solver per unit): p, q, ΔP⁺ ≤ P_max − P_grid, ΔP⁻ ≤ P_grid − P_min, ΔQ⁺ ≤ Q_max − Q_grid,
        # ΔQ⁻ ≤ Q_grid − Q_min, curtailment ≤ renewable output, shedding ≤ max(−p, 0), spill ≤ max(p, 0); the
        # bounds clipped at 0 (_update)
        ub = 1.0 / self.base_kw
        self._ub = ub
        self._z_off = ([ub * a for a in self.grid_p_max_kw.tolist()], [ub * -a for a in self.grid_p_min_kw.tolist()],
                       [ub * a for a in self.grid_q_max_kvar.tolist()],
                       [ub * -a for a in self.grid_q_min_kvar.tolist()])
        self._z = [0.0] * self.n_z
        # q: the entries that change are one price times a coefficient (l: r·w; ΔP⁺, ΔP⁻, t: one coefficient for
        # all), between runs of constant ones
        q_const = self.q_const.tolist()
        changing = np.flatnonzero(np.any(self.q_of_price != 0.0, axis=1)).tolist()
        groups = [[] for _ in range(6)]  # per price: (index in q, coefficient)
        for i in changing:
            (k,) = np.flatnonzero(self.q_of_price[i])  # one price per entry (asserted by the unpacking)
            if q_const[i] != 0.0:
                raise AssertionError("an entry of q both constant and price-dependent")
            groups[int(k)].append((i, float(self.q_of_price[i, k])))
        if any(len({a for _, a in g}) > 1 for g in groups[1:]):
            raise AssertionError("q: one coefficient for ΔP⁺, ΔP⁻, t and each sharing group expected")
        self._q_coef_l = [a for _, a in groups[0]]
        self._q_coef_uni = tuple((g[0][1] if g else 0.0, len(g)) for g in groups[1:])
        # q = [const, l, const, ΔP⁺, ΔP⁻, const, t, const (, shared in, shared out)]: the variables' order (__init__)
        ix, sl = self.ix, self._sl
        want = [ix["l"], ix["dpu"], ix["dpd"], ix["t"], ix.get("share_in", []), ix.get("share_out", [])]
        if [[i for i, _ in g] for g in groups] != want or sl["dpu"].stop != sl["dpd"].start or \
                (self.sharing and not (sl["share_in"].stop == sl["share_out"].start and sl["share_out"].stop
                                       == self.n_var)):
            raise AssertionError("q: unexpected layout of the price-dependent entries")
        end = sl["share_in"].start if self.sharing else self.n_var
        self._q_const_seg = (q_const[:sl["l"].start], q_const[sl["l"].stop: sl["dpu"].start],
                             q_const[sl["dpd"].stop: sl["t"].start], q_const[sl["t"].stop: end])
        self._q = q_const  # the current q (a list or tuple of floats; the q property gives an array)
        self._q_key = None  # (price, loss weight override) of the current q: q depends on nothing else
        self._q_sent = False  # whether the persistent Clarabel solver holds the current q
        # b: each row that changes is one entry of z times a coefficient, plus the row's constant. Rows whose
        # coefficient is 1 and constant −0.0 are that entry of z itself (−0.0 + v == v, bit for bit); the others
        # (the reactive epigraph's (k − 1)·ΔQ headroom) are computed; b is gathered from [b_const, z, those].
        b_const = self.b_const.tolist()
        pos, nontrivial = list(range(self.m)), []
        for r in self._b_rows.tolist():
            row = Bz.getrow(r)
            (k,) = row.indices  # one entry of z per row
            a, base = float(row.data[0]), b_const[r]
            if a == 1.0 and base == 0.0 and math.copysign(1.0, base) < 0.0:
                pos[r] = self.m + int(k)
            else:
                pos[r] = self.m + self.n_z + len(nontrivial)
                nontrivial.append((int(k), a, base))
        self._b_src = b_const
        self._b_gather = _getter(pos)
        self._bn_z = _getter([k for k, _, _ in nontrivial])
        self._bn_coef = [a for _, a, _ in nontrivial]
        self._bn_base = None if all(base == 0.0 and math.copysign(1.0, base) < 0.0 for *_, base in nontrivial) \
            else [base for *_, base in nontrivial]  # None: all −0.0, a·v + (−0.0) == a·v
        self._b = tuple(b_const)  # the current b (a tuple of floats; the b property gives an array)
        # the result: slices of x, per-edge and per-microgrid constants
        sl = self._sl
        if not (sl["dpu"].stop == sl["dpd"].start == sl["cur"].start - M and sl["cur"].stop == sl["shd"].start
                and sl["shd"].stop == sl["u"].start):
            raise AssertionError("ΔP⁺, ΔP⁻, curtailment, shedding, u expected next to each other in x")
        self._x_slices = (sl["v"], sl["l"], sl["P"], sl["Q"], slice(sl["dpu"].start, sl["u"].stop), sl["v_slack_hi"],
                          sl["v_slack_lo"], sl["spill"])
        self._v0_sq = cfg.substation_v_pu ** 2
        self._root_viol = max(0.0, self._v0_sq - cfg.v_max_pu ** 2, cfg.v_min_pu ** 2 - self._v0_sq)  # = S[0]
        if self.feeder:  # the background load at nominal, solver per unit, per bus (the root's is the substation's)
            self._bg_p = [self._ub * a for a in self.net.background_p_kw.tolist()]
            self._bg_q = [self._ub * a for a in self.net.background_q_kvar.tolist()]
            self._bg_mg_p = [self._bg_p[j] for j in mg_node]
            self._bg_mg_q = [self._bg_q[j] for j in mg_node]
            self._bg_total_kw = float(self.net.background_p_kw.sum())
        self._r_list = self.r_pu.tolist()
        self._edge_from = frm.tolist()
        self._v_from = _getter(self._edge_from)
        self._mg_node = mg_node
        self._v_mg = _getter(mg_node)
        self._root_edges = [e for e in range(self.E) if int(frm[e]) == 0]
        self._zeros_m = [0.0] * self.M
        self._background_kw = 0.0
        if self.feeder:
            phys, settle = _getter(self._p_balance_rows), _getter(self._p_settle_rows)
            self._dual_getter = lambda y: [a - b for a, b in zip(phys(y), settle(y))]  # noqa: E731
        else:
            self._dual_getter = _getter(self._p_balance_rows)
        # d(objective €)/d(injection kW) per hour from a balance row's dual: b = p / base_kw, objective ÷ obj_scale;
        # the sign makes it the price of consuming one kWh more at the node (Clarabel: A x + s = b, z ∈ K*)
        self._dual_to_eur_per_kwh = self.obj_scale_eur / (self.base_kw * self.dt_h)
        self._dual_p = None
        self._v_lo_sq, self._v_hi_sq = v_lo, v_hi
        self._z_coef_h = [-ub] * M + [ub] * M + [-ub] * M + [ub] * M  # ΔP⁺, ΔP⁻, ΔQ⁺, ΔQ⁻ headroom
        self._z_off_h = [a for o in self._z_off for a in o]
        self._no_renewable_bound = None  # solve() without renewable_kw: curtailment bounded by the surplus

    @property
    def q(self) -> np.ndarray:
        """The current cost vector (solver scale), as an array."""
        return np.array(self._q, float)

    @property
    def b(self) -> np.ndarray:
        """The current right-hand side, as an array."""
        return np.array(self._b, float)

    # ------------------------------------------------------------------ data update
    def _prices(self, price: float):
        """(π⁺, π⁻, w, c_q, c_qs) for the step: :func:`step_prices`."""
        return step_prices(price, self.cfg)

    def _update_q(self, price: float, loss_weight_eur_per_kwh: float | None = None):
        """Write the cost vector q for the price; returns the step's prices.

        ``loss_weight_eur_per_kwh`` replaces w in q only (the exactness repair); the returned prices keep w."""
        prices = self._prices(price)
        key = self._q_key
        if key is None or key[0] != price or key[1] != loss_weight_eur_per_kwh:
            pi_up, pi_dn, w, c_q, _ = prices
            if loss_weight_eur_per_kwh is not None:
                w = loss_weight_eur_per_kwh
            (a1, n1), (a2, n2), (a3, n3), (a4, n4), (a5, n5) = self._q_coef_uni
            c0, c1, c2, c3 = self._q_const_seg
            self._q = [*c0, *[a * w for a in self._q_coef_l], *c1, *[a1 * pi_up] * n1, *[a2 * -pi_dn] * n2,
                       *c2, *[a3 * c_q] * n3, *c3]
            if n4:  # sharing: relative to the balancing prices
                self._share_prices = s_in, s_out = sharing_prices(price, pi_up, pi_dn, self.cfg)
                self._q += [a4 * s_in] * n4 + [a5 * s_out] * n5
            self._q_key, self._q_sent = (price, loss_weight_eur_per_kwh), False
        return prices

    def _update(self, p_kw: list, q_kvar: list, price: float, p_grid_kw: list, q_grid_kvar: list,
                renewable_kw: list, background_scale: float = 1.0):
        """Write the step's data z, cost vector q and right-hand side b (inputs: lists of M floats)."""
        prices = self._update_q(price)
        # z (solver per unit): p, q; the trade headroom clipped at 0 as np.maximum(·, 0.0) does (NaN and −0.0
        # kept); the curtailment bound (the renewable output; without it, the surplus max(p, 0)), the shedding bound
        # max(−p, 0) and the spill bound max(p, 0) (each 0.0 where its sign says so)
        ub = self._ub
        spill = [0.0 if (v := ub * a) <= 0.0 else v for a in p_kw]
        cur = spill if renewable_kw is None else [0.0 if (v := ub * r) <= 0.0 else v for r in renewable_kw]
        self._z = z = ([ub * a + 0.0 for a in p_kw + q_kvar]
                       + [0.0 if (v := c * a + o) < 0.0 else v
                          for c, a, o in zip(self._z_coef_h, p_grid_kw + p_grid_kw + q_grid_kvar + q_grid_kvar,
                                             self._z_off_h)]
                       + cur + [0.0 if (v := -ub * a) <= 0.0 else v for a in p_kw] + spill)
        if self.feeder:
            k = float(background_scale)
            self._background_kw = k * self._bg_total_kw
            z += [ub * (a - g) - k * b for a, g, b in zip(p_kw, p_grid_kw, self._bg_mg_p)]
            z += [ub * a - k * b for a, b in zip(q_kvar, self._bg_mg_q)]
            z += [-k * b for b in self._bg_p[1:]] + [-k * b for b in self._bg_q[1:]]
        # b: its constant rows, entries of z, and a·z (+ the row's constant unless it is −0.0)
        nt = [a * v for a, v in zip(self._bn_coef, self._bn_z(z))]
        if self._bn_base is not None:
            nt = [base + v for base, v in zip(self._bn_base, nt)]
        self._b = self._b_gather(self._b_src + z + nt)
        return prices

    # ------------------------------------------------------------------ solvers
    def __getstate__(self):
        """Pickle without the solver objects (they are native and rebuilt on the next solve)."""
        state = self.__dict__.copy()
        state["_clarabel"] = None
        state["_q_sent"] = False
        state.pop("_clarabel_ok", None)
        for key in ("_ecos_G", "_ecos_Aeq", "_ecos_dims"):
            state.pop(key, None)
        return state

    def _reference_q(self) -> list:
        """The cost vector the persistent solver is built with: a fixed price (0.1 €/kWh), every y priced at VOLL.

        Built from the configuration alone, not from the first step's data: Clarabel scales the problem once, at
        construction, partly from q; a solver built on the first step's q rounded that step's answer differently
        (~1e-11) from the same step solved later after an update. Every step is an update of this one solver."""
        saved = (self._q, self._q_key, self._q_sent, getattr(self, "_share_prices", None))
        self._q_key = None
        self._update_q(0.1)
        q = list(self._q)
        self._q, self._q_key, self._q_sent, self._share_prices = saved  # the step's own prices stay
        return q

    def _solve_clarabel(self):
        solver = self._clarabel
        if solver is None:
            import clarabel

            settings = clarabel.DefaultSettings()
            settings.verbose = False
            settings.presolve_enable = False  # keeps the data-update path available
            settings.max_threads = 1
            # Tolerance 1e-9 (default 1e-8) on the 1 MVA solver base: the network's power balance closes to
            # ~1e-9 kW and the relaxation gap stays ~1e-8 p.u. (docs/model.md, "Solving").
            settings.tol_feas = settings.tol_gap_abs = settings.tol_gap_rel = 1e-9
            # Iterative refinement of each KKT solve off: it doubled the time per iteration (8 microgrids: 48 →
            # 26 µs). What it corrected is mostly the static regularisation's perturbation, so that goes down
            # (1e-8 → 1e-10): with both, the answers match the refined solve (relaxation gap, node balance and
            # voltage-drop residuals within the test tolerances; docs/model.md, "Solving"). Refinement off with
            # the default regularisation left voltage-drop residuals of 3e-8; with 1e-12, gaps of 1e-6 p.u.
            settings.iterative_refinement_enable = False
            settings.static_regularization_constant = 1e-10
            cones = [clarabel.ZeroConeT(self.m_eq), clarabel.NonnegativeConeT(self.m_nonneg)]
            cones += [clarabel.SecondOrderConeT(4)] * self.E
            P = sp.csc_matrix((self.n_var, self.n_var))
            self._clarabel_ok = (clarabel.SolverStatus.Solved, clarabel.SolverStatus.AlmostSolved)
            self._clarabel = solver = clarabel.DefaultSolver(P, self._reference_q(), self.A, list(self.b_const),
                                                             cones, settings)
            self._q_sent = False
        if self._q_sent:
            # q changes only with the price and y's cost: not re-sent when those repeat (update_q would write the
            # same values). Whole vectors as lists or tuples: half the cost of arrays; the binding's (index, value)
            # form for the rows that change costs more than the whole vector (it first tries a vector).
            solver.update(b=self._b)
        else:
            solver.update(q=self._q, b=self._b)
        self._q_sent = True
        sol = solver.solve()
        if sol.status not in self._clarabel_ok:
            raise RuntimeError(f"clarabel status {sol.status}")
        self._dual_p = self._dual_getter(sol.z)
        return sol.x, sol.solve_time, sol.iterations  # x: a list of floats, what _result reads

    def _solve_ecos(self):
        import ecos

        if not hasattr(self, "_ecos_G"):
            self._ecos_Aeq = sp.csc_matrix(self.A[: self.m_eq])
            self._ecos_G = sp.csc_matrix(self.A[self.m_eq:])
            self._ecos_dims = {"l": self.m_nonneg, "q": [4] * self.E, "e": 0}
        b = self.b
        sol = ecos.solve(self.q, self._ecos_G, b[self.m_eq:], self._ecos_dims, self._ecos_Aeq, b[: self.m_eq],
                         verbose=False, feastol=1e-9, abstol=1e-9, reltol=1e-9)
        info = sol["info"]
        if info["exitFlag"] not in (0, 10):  # 10: optimal to reduced accuracy, still far better than giving up
            raise RuntimeError(f"ecos exitFlag {info['exitFlag']} ({info.get('infostring', '')})")
        self._dual_p = self._dual_getter(np.asarray(sol["y"], float).tolist())  # the equality rows come first
        return np.asarray(sol["x"], float).tolist(), float(info["timing"]["runtime"]), int(info["iter"])

    # ------------------------------------------------------------------ public
    def _as_list(self, values, name: str) -> list:
        if type(values) is list and len(values) == self.M:  # the env's path: already M floats
            return values
        arr = np.asarray(values, float)
        if arr.size != self.M:
            raise ValueError(f"{name} needs {self.M} values (one per microgrid), got shape {arr.shape}")
        return arr.reshape(-1).tolist()

    @staticmethod
    def _reject_non_finite(**inputs) -> None:
        """Raise ValueError naming the first non-finite input (a sum of finite values may overflow: then pass)."""
        for name, values in inputs.items():
            for m, a in enumerate(values):
                if not math.isfinite(a):
                    raise ValueError(f"ConicOPF.solve: {name}[{m}] is {a!r}; every input must be finite")

    def solve(self, p_kw, q_kvar, price_eur_per_kwh: float, p_grid_kw=None, q_grid_kvar=None,
              renewable_kw=None, background_scale: float = 1.0) -> OPFResult:
        """Solve for one step.

        Args:
            p_kw, q_kvar: each microgrid's net injection into the network (surplus positive), shape (M,).
            price_eur_per_kwh: the real-time price c_t.
            p_grid_kw, q_grid_kvar: the lower layer's own trade with the main grid (default 0); the OPF's
                ΔP/ΔQ use the rest of each microgrid's trade limits.
            renewable_kw: each microgrid's PV + WT output this hour (kW ≥ 0): only generation can be curtailed,
                so curtailment ≤ renewable_kw (a neighbour's surplus may flow in while a microgrid curtails its
                own PV); a surplus beyond curtailment and the export headroom is spilled at VOLL. ``None``:
                curtailment ≤ the microgrid's surplus instead (env v0's bound) — the env always passes it.
            background_scale: on the full feeder, the factor on every bus's nominal load this hour.
        """
        M = self.M
        if type(p_kw) is not list or len(p_kw) != M:  # the env's path: lists of M floats, used as they are
            p_kw = self._as_list(p_kw, "p_kw")
        if type(q_kvar) is not list or len(q_kvar) != M:
            q_kvar = self._as_list(q_kvar, "q_kvar")
        if p_grid_kw is None:
            p_grid_kw = [0.0] * M
        elif type(p_grid_kw) is not list or len(p_grid_kw) != M:
            p_grid_kw = self._as_list(p_grid_kw, "p_grid_kw")
        if q_grid_kvar is None:
            q_grid_kvar = [0.0] * M
        elif type(q_grid_kvar) is not list or len(q_grid_kvar) != M:
            q_grid_kvar = self._as_list(q_grid_kvar, "q_grid_kvar")
        if renewable_kw is None:
            ren = self._no_renewable_bound
        else:
            ren = renewable_kw if type(renewable_kw) is list and len(renewable_kw) == M else \
                self._as_list(renewable_kw, "renewable_kw")
            if not math.isfinite(sum(ren)) or min(ren) < 0.0:
                raise ValueError(f"ConicOPF.solve: renewable_kw must be finite and >= 0, got {ren}")
        price = float(price_eur_per_kwh)
        if not math.isfinite(sum(p_kw) + sum(q_kvar) + sum(p_grid_kw) + sum(q_grid_kvar) + price):
            self._reject_non_finite(p_kw=p_kw, q_kvar=q_kvar, p_grid_kw=p_grid_kw, q_grid_kvar=q_grid_kvar,
                                    price_eur_per_kwh=[price])
        if not (math.isfinite(background_scale) and background_scale >= 0.0):
            raise ValueError(f"ConicOPF.solve: background_scale must be finite and >= 0, got {background_scale!r}")
        prices = self._update(p_kw, q_kvar, price, p_grid_kw, q_grid_kvar, ren, background_scale)
        t0 = time.perf_counter()
        res = self._solve_chain(prices, t0)
        if res is None:
            return self._safe_dispatch(p_kw, q_kvar, prices, time.perf_counter() - t0, self._errors, ren)
        if res.relaxation_gap_pu > self.exactness_tol_pu:
            res = self._repair(res, price, prices, t0)
        return res

    def _solve_chain(self, prices, t0) -> OPFResult | None:
        """Solve with the primary solver, then the fallback; None if both fail (messages in ``self._errors``)."""
        self._errors = errors = []
        for k, name in enumerate(self._chain):
            try:
                x, solver_time, iters = self._solve_clarabel() if name == "clarabel" else self._solve_ecos()
                if not math.isfinite(sum(x)) and not all(map(math.isfinite, x)):  # sum first: one C call
                    raise RuntimeError(f"{name} returned non-finite values")
            except Exception as exc:  # noqa: BLE001 - any solver trouble falls back, never raises
                errors.append(f"{name}: {exc}")
                continue
            return self._result(x, prices, STATUS_OPTIMAL if k == 0 else STATUS_FALLBACK_SOLVER, "optimal", name,
                                time.perf_counter() - t0, solver_time, iters, errors, dual=self._dual_p)
        return None

    def _repair(self, res: OPFResult, price: float, prices, t0) -> OPFResult:
        """Exactness repair of a step whose relaxation gap exceeds the tolerance: re-solve once with the loss
        weight raised above VOLL, so that no outlet (spill and shedding included) is dearer than a fictitious loss,
        and keep the answer if its gap is smaller. Its costs are reported at the step's own prices (losses at w)."""
        self._update_q(price, prices[2] + self.cfg.voll_eur_per_kwh + self.cfg.loss_price_margin_eur_per_kwh)
        repaired = self._solve_chain(prices, t0)
        self._update_q(price)  # the next step starts from the step's own q
        if repaired is None or repaired.relaxation_gap_pu >= res.relaxation_gap_pu:
            res.exactness_repair = -1  # tried, no better
            return res
        repaired.exactness_repair = 1
        return repaired

    def _result(self, x, prices, code, status, solver, wall, solver_time, iters, errors, out=None,
                dual=None) -> OPFResult:
        """The result record from the solver's solution ``x`` (solver per unit, a list), in plain Python floats.

        ``dual``: the solver's duals of the microgrids' active-power balance rows, the source of the nodal prices
        (without them, e.g. for the safe dispatch, each microgrid's price is its balancing price π⁺).

        ``out`` (instead of ``x``): the values (v, l, P, Q, ΔP⁺, ΔP⁻, curtailment, shedding, u, s, ΔQ⁺ and ΔQ⁻
        headroom, spill) as one list, s being each node's voltage slack (the root's constant violation first)."""
        M, bk, dt, cfg = self.M, self.base_kw, self.dt_h, self.cfg
        if out is None:
            if type(x) is not list:
                x = np.asarray(x, float).tolist()
            s_v, s_l, s_p, s_q, s_mg, s_svh, s_svl, s_spill = self._x_slices
            v = [self._v0_sq] + x[s_v]  # the root's voltage is the substation's set-point
            l_raw, P, Q = x[s_l], x[s_p], x[s_q]
            mg = [a * bk for a in x[s_mg]]  # ΔP⁺, ΔP⁻, curtailment, shedding, u in kW / kVar
            spill_raw = [a * bk for a in x[s_spill]]
            slack = [a for a in map(add, x[s_svh], x[s_svl]) if a > 0.0]
            if self._root_viol > 0.0:
                slack.insert(0, self._root_viol)
            z = self._z
            h = [a * bk for a in z[4 * M: 6 * M]]  # ΔQ⁺, ΔQ⁻ headroom in kVar
        else:
            n, E = self.n, self.E
            v = out[:n]
            l_raw, P, Q = out[n: n + E], out[n + E: n + 2 * E], out[n + 2 * E: n + 3 * E]
            k = n + 3 * E
            mg = [a * bk for a in out[k: k + 5 * M]]
            k += 5 * M
            slack = [a for a in out[k: k + n] if a > 0.0]
            h = [a * bk for a in out[k + n: k + n + 2 * M]]
            spill_raw = [a * bk for a in out[k + n + 2 * M:]]
        pi_up, pi_dn, w, c_q, c_qs = prices
        c_cur, c_shd = cfg.curtailment_cost_eur_per_kwh, cfg.voll_eur_per_kwh
        l = [a if a > 0.0 else 0.0 for a in l_raw]
        cost, dp, dq, cur, shd, spl, qsl = [], [], [], [], [], [], []
        for u_p, d_p, c_raw, s_raw, u_q, hu, hd, sp_raw in zip(mg[:M], mg[M: 2 * M], mg[2 * M: 3 * M],
                                                               mg[3 * M: 4 * M], mg[4 * M:], h[:M], h[M:], spill_raw):
            # Solver round-off below 0 of curtailment, shedding and spill is absorbed by ΔP, so that the node
            # balance stays closed: ΔP − curt + shed − spill = ΔP⁺ − ΔP⁻ − curt_raw + shed_raw − spill_raw.
            c_m = c_raw if c_raw > 0.0 else 0.0
            s_m = s_raw if s_raw > 0.0 else 0.0
            sp_m = sp_raw if sp_raw > 0.0 else 0.0
            dp.append(u_p - d_p + (c_m - c_raw) + (s_raw - s_m) + (sp_m - sp_raw))
            # u = ΔQ + reactive slack: ΔQ within its headroom, the slack beyond it
            d_q = hu if u_q > hu else (-hd if u_q < -hd else u_q)
            s_q = u_q - d_q
            dq.append(d_q)
            cur.append(c_m)
            shd.append(s_m)
            spl.append(sp_m)
            qsl.append(s_q)
            # max(a, 0.0) written out: 0.0 if 0.0 > a else a (the same value, without a call)
            cost.append((pi_up * (0.0 if 0.0 > u_p else u_p) - pi_dn * (0.0 if 0.0 > d_p else d_p) + c_q * abs(d_q)
                         + c_cur * c_m + c_shd * (s_m + sp_m) + c_qs * abs(s_q)) * dt)
        v_mg = [0.0 if 0.0 > a else sqrt(a) for a in self._v_mg(v)]  # √max(v, 0)
        shared = self._zeros_m
        if self.sharing and out is None:  # the shared parts of ΔP, at their own prices (cost relative to π⁺/π⁻)
            s_in, s_out = self._share_prices
            a_in = [0.0 if 0.0 > a else a * bk for a in x[self._sl["share_in"]]]
            a_out = [0.0 if 0.0 > a else a * bk for a in x[self._sl["share_out"]]]
            shared = [a - b for a, b in zip(a_in, a_out)]
            cost = [c + (s_in * a + s_out * b) * dt for c, a, b in zip(cost, a_in, a_out)]
        k = self._dual_to_eur_per_kwh
        dlmp = [pi_up] * M if dual is None else [k * y for y in dual]
        losses_kw = sum([r * le for r, le in zip(self._r_list, l)]) * bk
        v_pen = cfg.voltage_penalty_eur_per_pu_h * sum(slack) * dt
        loss_cost = w * losses_kw * dt
        gap = max([le - (p * p + q * q) / (1e-9 if 1e-9 > vi else vi)  # / max(v_from, 1e-9)
                   for le, p, q, vi in zip(l, P, Q, self._v_from(v))], default=0.0) * self._gap_to_feeder_pu
        v_lo, v_hi = min(v), max(v)
        viol = max(v_hi - self._v_hi_sq, self._v_lo_sq - v_lo, 0.0)
        res = OPFResult(status, code, solver, loss_cost + sum(cost) + v_pen, loss_cost, v_pen, losses_kw, gap,
                        viol, wall, solver_time, iters, errors,
                        _new_balance(MicrogridBalance, (cost, dp, dq, cur, shd, spl, qsl, v_mg, shared, dlmp)),
                        (v, l, P, Q, bk, self.i_base_ka))
        res.v_min_pu, res.v_max_pu = sqrt(max(v_lo, 0.0)), sqrt(max(v_hi, 0.0))
        if self.feeder:  # what the substation delivers into the feeder: the flows leaving the root
            res.substation_p_kw = sum([P[e] for e in self._root_edges]) * bk
            res.background_p_kw = self._background_kw
        return res

    def _safe_dispatch(self, p_kw, q_kvar, prices, wall, errors, renewable_kw) -> OPFResult:
        """Last resort: settle each imbalance with the main grid within headroom, then curtail (generation only),
        spill or shed."""
        bk, M = self.base_kw, self.M
        p_kw, q_kvar = np.asarray(p_kw, float), np.asarray(q_kvar, float)
        z = np.asarray(self._z, float) * bk
        dpu = np.minimum(np.maximum(-p_kw, 0.0), z[2 * M: 3 * M])
        dpd = np.minimum(np.maximum(p_kw, 0.0), z[3 * M: 4 * M])
        x = np.zeros(self.n_var)
        # no network flows: each node's balance gives the rest −p − ΔP, shed if positive, else curtailed up to the
        # renewable output and spilled beyond it; u = −q
        rest = -p_kw - dpu + dpd
        bound = np.maximum(p_kw, 0.0) if renewable_kw is None else np.asarray(renewable_kw, float)
        cur = np.minimum(np.maximum(-rest, 0.0), bound)
        for name, val in (("dpu", dpu), ("dpd", dpd), ("shd", np.maximum(rest, 0.0)), ("cur", cur),
                          ("spill", np.maximum(-rest, 0.0) - cur), ("u", -q_kvar)):
            x[self.ix[name]] = val / bk
        x[self.ix["v"]] = 1.0
        res = self._result(x.tolist(), prices, STATUS_SAFE_DISPATCH, "safe_dispatch", "none", wall, 0.0, 0, errors)
        res.relaxation_gap_pu = 0.0
        return res

    def solve_reference(self, p_kw, q_kvar, price_eur_per_kwh: float, p_grid_kw=None, q_grid_kvar=None,
                        renewable_kw=None, solver: str = "ECOS", problem=None,
                        background_scale: float = 1.0) -> OPFResult:
        """Solve the same step with the cvxpy reference formulation and report it like :meth:`solve`.

        ``problem`` (from :func:`build_cvxpy_opf`) is re-used when given (DPP: compiled once); without it the
        cvxpy problem is rebuilt and re-canonicalised for this call — the naive approach the fast path replaces.
        """
        import cvxpy as cp

        M = self.M
        p_kw, q_kvar = self._as_list(p_kw, "p_kw"), self._as_list(q_kvar, "q_kvar")
        p_grid_kw = [0.0] * M if p_grid_kw is None else self._as_list(p_grid_kw, "p_grid_kw")
        q_grid_kvar = [0.0] * M if q_grid_kvar is None else self._as_list(q_grid_kvar, "q_grid_kvar")
        ren = self._no_renewable_bound if renewable_kw is None else self._as_list(renewable_kw, "renewable_kw")
        prices = self._update(p_kw, q_kvar, float(price_eur_per_kwh), p_grid_kw, q_grid_kvar, ren, background_scale)
        if problem is None:
            problem = build_cvxpy_opf(self.net, self.cfg, M, self.dt_h, self.obj_scale_eur, self.solver_base_mva)
        prob, prm, var = problem
        limits = (self.grid_p_min_kw, self.grid_p_max_kw, self.grid_q_min_kvar, self.grid_q_max_kvar)
        set_cvxpy_params(prm, self.net, self.cfg, p_kw, q_kvar, price_eur_per_kwh, limits, p_grid_kw, q_grid_kvar,
                         base_mva=self.solver_base_mva, renewable_kw=renewable_kw, background_scale=background_scale)
        t0 = time.perf_counter()
        try:
            prob.solve(solver=getattr(cp, solver))
            error = None if prob.status == cp.OPTIMAL else f"cvxpy/{solver}: status {prob.status}"
        except cp.error.SolverError as exc:
            error = f"cvxpy/{solver}: {exc}"
        wall = time.perf_counter() - t0
        if error is not None:
            return self._safe_dispatch(p_kw, q_kvar, prices, wall, [error], ren)
        v = var["v"].value
        z = self._z
        out = np.concatenate([v, var["l"].value, var["P"].value, var["Q"].value, var["dpu"].value, var["dpd"].value,
                              var["cur"].value, var["shd"].value,
                              var["dqu"].value - var["dqd"].value + var["qsu"].value - var["qsd"].value,
                              var["v_slack_hi"].value + var["v_slack_lo"].value, z[4 * M: 6 * M], var["spl"].value])
        stats = prob.solver_stats
        return self._result(None, prices, STATUS_OPTIMAL, "optimal", f"cvxpy/{solver}", wall,
                            float(stats.solve_time or 0.0), int(stats.num_iters or 0), [], out=out.tolist())

    def node_injections_kw(self, p_kw, q_kvar, result: OPFResult, p_grid_kw=None,
                           background_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Final injection at each node (kW, kVar) after the OPF's decisions — what an AC power flow needs. On the
        full feeder: each microgrid's own net (p − P_grid, its trades come through the substation) and every
        node's background load (× ``background_scale``), the substation (node 0) left to the power flow's slack."""
        pn, qn = np.zeros(self.n), np.zeros(self.n)
        mg = self.net.mg_node
        adjust = -result.curtailment_kw + result.shedding_kw - result.spill_kw
        if self.feeder:
            pg = np.zeros(self.M) if p_grid_kw is None else np.asarray(p_grid_kw, float)
            pn[mg] = np.asarray(p_kw) - pg + adjust
            pn -= background_scale * self.net.background_p_kw
            qn -= background_scale * self.net.background_q_kvar
        else:
            pn[mg] = np.asarray(p_kw) + result.delta_p_kw + adjust
        qn[mg] += np.asarray(q_kvar) + result.delta_q_kvar + result.q_slack_kvar
        return pn, qn


# ---------------------------------------------------------------------- cvxpy reference formulation
def build_cvxpy_opf(network: Network, cfg: OPFConfig, n_mg: int | None = None, dt_h: float = 1.0,
                    obj_scale_eur: float = 100.0, base_mva: float | None = None):
    """The same OPF as a cvxpy DPP problem (the readable reference).

    Returns ``(problem, params, variables)``; parameters: ``p``, ``q`` (per unit, per microgrid), ``dpu_max``,
    ``dpd_max``, ``dqu_max``, ``dqd_max``, ``cur_max``, ``shd_max``, ``spl_max`` (per unit), and the € prices ``pi_up``,
    ``pi_dn``, ``w``, ``c_q``, ``c_qs`` (per kWh). The objective is in € divided by ``obj_scale_eur`` (order
    one for the solver, as in the fast path). Per-unit quantities are on ``base_mva`` (default: the feeder's).
    On the full feeder (``network.topology == "feeder"``) also ``p_grid`` (per microgrid) and ``bg_p``, ``bg_q``
    (every node's own load this hour): the substation's injection is free, each microgrid injects its own net
    p − P_grid, and ΔP settles the rest (ΔP + p − curt + shed − spill = 0).
    """
    import cvxpy as cp

    n, E = network.n_nodes, network.n_edges
    M = len(network.mg_node) if n_mg is None else n_mg
    base_mva = network.base_mva if base_mva is None else float(base_mva)
    bk = base_mva * 1000.0
    z_base_ohm = network.base_kv ** 2 / base_mva
    r, x = network.r_ohm / z_base_ohm, network.x_ohm / z_base_ohm
    i_base_ka = base_mva / (math.sqrt(3) * network.base_kv)
    frm, to = network.edge_from, network.edge_to
    C_out, C_in, G = network.incidence()
    prm = {k: cp.Parameter(M, name=k) for k in ("p", "q")}
    prm.update({k: cp.Parameter(M, nonneg=True, name=k) for k in
                ("dpu_max", "dpd_max", "dqu_max", "dqd_max", "cur_max", "shd_max", "spl_max")})
    prm.update({k: cp.Parameter(name=k) for k in ("pi_up", "pi_dn")})
    prm.update({k: cp.Parameter(nonneg=True, name=k) for k in ("w", "c_q", "c_qs")})
    v, l = cp.Variable(n, name="v"), cp.Variable(E, name="l")
    P, Q = cp.Variable(E, name="P"), cp.Variable(E, name="Q")
    var = {k: cp.Variable(M, nonneg=True, name=k)
           for k in ("dpu", "dpd", "dqu", "dqd", "cur", "shd", "spl", "qsu", "qsd")}
    svh, svl = cp.Variable(n, nonneg=True, name="v_slack_hi"), cp.Variable(n, nonneg=True, name="v_slack_lo")
    var.update(v=v, l=l, P=P, Q=Q, v_slack_hi=svh, v_slack_lo=svl)
    adjust = - var["cur"] + var["shd"] - var["spl"]
    inj_q = G @ (prm["q"] + var["dqu"] - var["dqd"] + var["qsu"] - var["qsd"])
    out_p, out_q = C_out @ P - C_in @ (P - cp.multiply(r, l)), C_out @ Q - C_in @ (Q - cp.multiply(x, l))
    if network.topology == "feeder":
        prm.update(p_grid=cp.Parameter(M, name="p_grid"), bg_p=cp.Parameter(n, name="bg_p"),
                   bg_q=cp.Parameter(n, name="bg_q"))
        inj_p = G @ (prm["p"] - prm["p_grid"] + adjust) - prm["bg_p"]
        inj_q = inj_q - prm["bg_q"]
        balance = [out_p[1:] == inj_p[1:], out_q[1:] == inj_q[1:],  # eq. 11, 12; the substation's is free
                   var["dpu"] - var["dpd"] + prm["p"] + adjust == 0]  # ΔP settles the rest of the schedule
        if cfg.sharing:  # parts of ΔP⁺/ΔP⁻ traded between microgrids: what they buy, they sell
            prm["c"] = cp.Parameter(name="c")
            var["share_in"], var["share_out"] = cp.Variable(M, nonneg=True), cp.Variable(M, nonneg=True)
            balance += [var["share_in"] <= var["dpu"], var["share_out"] <= var["dpd"],
                        cp.sum(var["share_in"]) == cp.sum(var["share_out"])]
    else:
        inj_p = G @ (prm["p"] + var["dpu"] - var["dpd"] + adjust)
        balance = [out_p == inj_p, out_q == inj_q]  # eq. 11, 12
    cons = [
        v[0] == cfg.substation_v_pu ** 2,
        *balance,
        v[to] == v[frm] - 2 * (cp.multiply(r, P) + cp.multiply(x, Q)) + cp.multiply(r ** 2 + x ** 2, l),  # eq. 13
        v <= cfg.v_max_pu ** 2 + svh, v >= cfg.v_min_pu ** 2 - svl,  # eq. 16, softened
        var["dpu"] <= prm["dpu_max"], var["dpd"] <= prm["dpd_max"],  # eq. 17
        var["dqu"] <= prm["dqu_max"], var["dqd"] <= prm["dqd_max"],
        var["cur"] <= prm["cur_max"], var["shd"] <= prm["shd_max"], var["spl"] <= prm["spl_max"],
    ]
    for e in range(E):  # eq. 3/14
        cons.append(cp.SOC(l[e] + v[frm[e]], cp.hstack([2 * P[e], 2 * Q[e], l[e] - v[frm[e]]])))
    if cfg.current_limit_ka is not None:
        cons.append(l <= (cfg.current_limit_ka / i_base_ka) ** 2)  # eq. 15
    obj = dt_h * bk * (prm["w"] * (r @ l) + prm["pi_up"] * cp.sum(var["dpu"]) - prm["pi_dn"] * cp.sum(var["dpd"])
                       + prm["c_q"] * cp.sum(var["dqu"] + var["dqd"])
                       + cfg.voll_eur_per_kwh * cp.sum(var["shd"] + var["spl"])
                       + cfg.curtailment_cost_eur_per_kwh * cp.sum(var["cur"])
                       + prm["c_qs"] * cp.sum(var["qsu"] + var["qsd"]))
    obj = obj + dt_h * cfg.voltage_penalty_eur_per_pu_h * cp.sum(svh + svl)
    if "share_in" in var:  # c + fee − π⁺ per kWh bought from a neighbour, π⁻ − c per kWh sold to one
        obj = obj + dt_h * bk * ((prm["c"] + cfg.sharing_fee_eur_per_kwh - prm["pi_up"]) * cp.sum(var["share_in"])
                                 + (prm["pi_dn"] - prm["c"]) * cp.sum(var["share_out"]))
    problem = cp.Problem(cp.Minimize(obj / obj_scale_eur), cons)
    problem._mmgrid_obj_scale_eur = obj_scale_eur  # noqa: SLF001 - read back by solve_cvxpy_opf
    problem._mmgrid_base_mva = base_mva  # noqa: SLF001
    return problem, prm, var


def set_cvxpy_params(prm, network: Network, cfg: OPFConfig, p_kw, q_kvar, price, grid_limits, p_grid_kw=None,
                     q_grid_kvar=None, base_mva: float | None = None, renewable_kw=None,
                     background_scale: float = 1.0):
    """Fill the parameters of :func:`build_cvxpy_opf` for one step (same inputs as :meth:`ConicOPF.solve`)."""
    bk = (network.base_mva if base_mva is None else float(base_mva)) * 1000.0
    p_kw, q_kvar = np.asarray(p_kw, float), np.asarray(q_kvar, float)
    M = len(p_kw)
    p_grid_kw = np.zeros(M) if p_grid_kw is None else np.asarray(p_grid_kw, float)
    q_grid_kvar = np.zeros(M) if q_grid_kvar is None else np.asarray(q_grid_kvar, float)
    pmin, pmax, qmin, qmax = (np.asarray(a, float) for a in grid_limits)
    prm["p"].value = p_kw / bk
    prm["q"].value = q_kvar / bk
    prm["dpu_max"].value = np.maximum(pmax - p_grid_kw, 0) / bk
    prm["dpd_max"].value = np.maximum(p_grid_kw - pmin, 0) / bk
    prm["dqu_max"].value = np.maximum(qmax - q_grid_kvar, 0) / bk
    prm["dqd_max"].value = np.maximum(q_grid_kvar - qmin, 0) / bk
    cur_max = np.maximum(p_kw, 0) if renewable_kw is None else np.asarray(renewable_kw, float)
    prm["cur_max"].value = cur_max / bk
    prm["spl_max"].value = np.maximum(p_kw, 0) / bk
    prm["shd_max"].value = np.maximum(-p_kw, 0) / bk
    pi_up, pi_dn, w, c_q, c_qs = step_prices(price, cfg)
    prm["pi_up"].value, prm["pi_dn"].value, prm["w"].value = pi_up, pi_dn, w
    prm["c_q"].value, prm["c_qs"].value = c_q, c_qs
    if "c" in prm:
        prm["c"].value = float(price)
    if network.topology == "feeder":
        prm["p_grid"].value = p_grid_kw / bk
        prm["bg_p"].value = background_scale * network.background_p_kw / bk
        prm["bg_q"].value = background_scale * network.background_q_kvar / bk


def solve_cvxpy_opf(network: Network, cfg: OPFConfig, p_kw, q_kvar, price, grid_limits, p_grid_kw=None,
                    q_grid_kvar=None, solver: str = "ECOS", problem=None, dt_h: float = 1.0,
                    renewable_kw=None) -> dict:
    """Solve the reference formulation; returns a dict of decisions in kW/kVar and the objective in €.

    Pass ``problem=(problem, params, variables)`` from :func:`build_cvxpy_opf` to reuse a compiled problem.
    """
    import cvxpy as cp

    if problem is None:
        problem = build_cvxpy_opf(network, cfg, len(np.atleast_1d(p_kw)), dt_h)
    prob, prm, var = problem
    base_mva = prob._mmgrid_base_mva
    set_cvxpy_params(prm, network, cfg, p_kw, q_kvar, price, grid_limits, p_grid_kw, q_grid_kvar, base_mva,
                     renewable_kw)
    kwargs = {"max_iters": 200, "abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9} if solver == "ECOS" else {}
    prob.solve(solver=getattr(cp, solver), **kwargs)
    bk = base_mva * 1000.0
    r_pu = network.r_ohm / (network.base_kv ** 2 / base_mva)
    v, l, P, Q = var["v"].value, var["l"].value, var["P"].value, var["Q"].value
    frm = network.edge_from
    to_feeder_pu = (base_mva / network.base_mva) ** 2
    return {
        "status": prob.status, "objective_eur": float(prob.value) * prob._mmgrid_obj_scale_eur,
        "delta_p_kw": (var["dpu"].value - var["dpd"].value) * bk,
        "delta_q_kvar": (var["dqu"].value - var["dqd"].value) * bk,
        "curtailment_kw": var["cur"].value * bk, "shedding_kw": var["shd"].value * bk,
        "spill_kw": var["spl"].value * bk,
        "v_pu": np.sqrt(np.maximum(v, 0)), "p_flow_kw": P * bk, "q_flow_kvar": Q * bk,
        "losses_kw": float(r_pu @ l * bk),
        "relaxation_gap_pu": float(np.max(l - (P ** 2 + Q ** 2) / v[frm])) * to_feeder_pu if network.n_edges else 0.0,
    }

