"""Upper layer: the second-order-cone relaxed branch-flow OPF between microgrids (SPEC §4, eq. 3, 11–17, 22).

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
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .config import OPFConfig
from .network import Network

__all__ = ["OPFResult", "ConicOPF", "balancing_prices", "loss_weight", "reactive_cost", "build_cvxpy_opf",
           "solve_cvxpy_opf", "STATUS_OPTIMAL", "STATUS_FALLBACK_SOLVER", "STATUS_SAFE_DISPATCH"]

STATUS_OPTIMAL = 0
"""The primary solver found the optimum."""
STATUS_FALLBACK_SOLVER = 1
"""The primary solver failed; the fallback solver found the optimum."""
STATUS_SAFE_DISPATCH = 2
"""Both solvers failed; every imbalance was settled with the main grid at balancing prices (no network flows)."""


def balancing_prices(price_eur_per_kwh: float, kappa: float) -> tuple[float, float]:
    """(π⁺, π⁻): an extra purchase costs π⁺ ≥ max(c, 0); an extra sale earns π⁻ ≤ c (SPEC §4)."""
    c = float(price_eur_per_kwh)
    pi_up = c + kappa * abs(c) if c >= 0 else kappa * abs(c)
    pi_dn = c - kappa * abs(c)
    return pi_up, pi_dn


def loss_weight(price_eur_per_kwh: float, floor_eur_per_kwh: float) -> float:
    """w_t = max(c_t, floor): losses always cost something, so they are never the cheapest outlet."""
    return max(float(price_eur_per_kwh), floor_eur_per_kwh)


def reactive_cost(price_eur_per_kwh: float, cfg: OPFConfig) -> float:
    """c_q = rel·|c_t| + abs (€/kVArh)."""
    return cfg.reactive_cost_rel * abs(float(price_eur_per_kwh)) + cfg.reactive_cost_abs_eur_per_kvarh


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
    solve_time_s: float
    """Wall time of the solver call(s) including the fallback."""
    solver_time_s: float = 0.0
    """The solver's own reported solve time (last solver used)."""
    iterations: int = 0
    errors: list = field(default_factory=list)
    """Messages of the solvers that failed before the answer (empty on a normal step)."""
    mg_lists: tuple = field(default=((),) * 7, repr=False, compare=False)
    """Per microgrid, as lists of floats: (balancing cost €, ΔP kW, ΔQ kVar, curtailment kW, shedding kW,
    q-slack kVar, voltage p.u.) — the source of the per-microgrid arrays."""
    network_lists: tuple = field(default=((), (), (), (), 1.0, 1.0), repr=False, compare=False)
    """(v, l, P, Q) in the solver's per unit, then its power base (kW) and current base (kA)."""

    @cached_property
    def mg_balancing_cost_eur(self) -> np.ndarray:
        """Per microgrid: its ΔP, ΔQ, curtailment, shedding and reactive-slack costs (€)."""
        return np.array(self.mg_lists[0])

    @cached_property
    def delta_p_kw(self) -> np.ndarray:
        """Balancing trade with the main grid decided by the OPF (kW, + buys)."""
        return np.array(self.mg_lists[1])

    @cached_property
    def delta_q_kvar(self) -> np.ndarray:
        """Reactive balancing trade (kVar, + imports)."""
        return np.array(self.mg_lists[2])

    @cached_property
    def curtailment_kw(self) -> np.ndarray:
        return np.array(self.mg_lists[3])

    @cached_property
    def shedding_kw(self) -> np.ndarray:
        return np.array(self.mg_lists[4])

    @cached_property
    def q_slack_kvar(self) -> np.ndarray:
        """Reactive power beyond the ΔQ limits (+ supplied, − absorbed); zero unless the limits bind."""
        return np.array(self.mg_lists[5])

    @cached_property
    def mg_v_pu(self) -> np.ndarray:
        """Voltage magnitude at each microgrid's node (p.u.)."""
        return np.array(self.mg_lists[6])

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


class ConicOPF:
    """The OPF as conic data, built once; each :meth:`solve` rewrites only the cost and right-hand side.

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
        # --- variable layout
        sizes = [("v", n), ("l", E), ("P", E), ("Q", E), ("dpu", M), ("dpd", M), ("dqu", M), ("dqd", M),
                 ("cur", M), ("shd", M), ("qsu", M), ("qsd", M), ("svh", n), ("svl", n)]
        self.ix: dict[str, np.ndarray] = {}
        k = 0
        for name, size in sizes:
            self.ix[name] = np.arange(k, k + size)
            k += size
        self.n_var = k
        ix = self.ix
        r, x = self.r_pu, self.x_pu
        frm, to = network.edge_from, network.edge_to  # edge e: frm[e] -> to[e] (= e + 1)
        mg_node = network.mg_node
        rows, cols, vals = [], [], []

        def add(row, col, val):
            rows.append(row)
            cols.append(col)
            vals.append(val)

        # --- equalities (zero cone): A x = b
        row = 0
        add(row, ix["v"][0], 1.0)  # root voltage fixed (it is no slack bus: balance comes from ΔP only)
        self.row_root = row
        row += 1
        self.row_pbal = row + np.arange(n)
        self.row_qbal = row + n + np.arange(n)
        for e in range(E):
            i, j = frm[e], to[e]
            add(self.row_pbal[i], ix["P"][e], 1.0)  # out of i
            add(self.row_pbal[j], ix["P"][e], -1.0)  # into j
            add(self.row_pbal[j], ix["l"][e], r[e])
            add(self.row_qbal[i], ix["Q"][e], 1.0)
            add(self.row_qbal[j], ix["Q"][e], -1.0)
            add(self.row_qbal[j], ix["l"][e], x[e])
        for m, j in enumerate(mg_node):
            add(self.row_pbal[j], ix["dpu"][m], -1.0)
            add(self.row_pbal[j], ix["dpd"][m], 1.0)
            add(self.row_pbal[j], ix["cur"][m], 1.0)
            add(self.row_pbal[j], ix["shd"][m], -1.0)
            add(self.row_qbal[j], ix["dqu"][m], -1.0)
            add(self.row_qbal[j], ix["dqd"][m], 1.0)
            add(self.row_qbal[j], ix["qsu"][m], -1.0)
            add(self.row_qbal[j], ix["qsd"][m], 1.0)
        row += 2 * n
        for e in range(E):
            i, j = frm[e], to[e]
            add(row, ix["v"][j], 1.0)
            add(row, ix["v"][i], -1.0)
            add(row, ix["P"][e], 2 * r[e])
            add(row, ix["Q"][e], 2 * x[e])
            add(row, ix["l"][e], -(r[e] ** 2 + x[e] ** 2))
            row += 1
        self.m_eq = row
        # --- inequalities (nonnegative cone): A x <= b
        nonneg = np.concatenate([ix[k] for k in ("dpu", "dpd", "dqu", "dqd", "cur", "shd", "qsu", "qsd",
                                                  "svh", "svl")])
        for vi in nonneg:
            add(row, vi, -1.0)
            row += 1
        self.row_ub = {}
        for name in ("dpu", "dpd", "dqu", "dqd", "cur", "shd"):
            self.row_ub[name] = row + np.arange(M)
            for m in range(M):
                add(row, ix[name][m], 1.0)
                row += 1
        self.row_vmax = row + np.arange(n)
        for j in range(n):
            add(row, ix["v"][j], 1.0)
            add(row, ix["svh"][j], -1.0)
            row += 1
        self.row_vmin = row + np.arange(n)
        for j in range(n):
            add(row, ix["v"][j], -1.0)
            add(row, ix["svl"][j], -1.0)
            row += 1
        self.l_max_pu = None
        if cfg.current_limit_ka is not None:
            self.l_max_pu = (cfg.current_limit_ka / self.i_base_ka) ** 2
            self.row_lmax = row + np.arange(E)
            for e in range(E):
                add(row, ix["l"][e], 1.0)
                row += 1
        self.m_nonneg = row - self.m_eq
        # --- second-order cones: s = (l + v_i, 2P, 2Q, l - v_i) = -A x (b = 0)
        for e in range(E):
            i = frm[e]
            add(row, ix["l"][e], -1.0)
            add(row, ix["v"][i], -1.0)
            add(row + 1, ix["P"][e], -2.0)
            add(row + 2, ix["Q"][e], -2.0)
            add(row + 3, ix["l"][e], -1.0)
            add(row + 3, ix["v"][i], 1.0)
            row += 4
        self.m = row
        self.A = sp.csc_matrix((vals, (rows, cols)), shape=(self.m, self.n_var))
        self.b = np.zeros(self.m)
        self.b[self.row_root] = 1.0
        self.b[self.row_vmax] = cfg.v_max_pu ** 2
        self.b[self.row_vmin] = -(cfg.v_min_pu ** 2)
        if self.l_max_pu is not None:
            self.b[self.row_lmax] = self.l_max_pu
        self.q = np.zeros(self.n_var)
        # Scale the objective to order one for the solver: € per (typical trade volume at 0.1 €/kWh).
        self.obj_scale_eur = trade_kw * 0.1 * self.dt_h
        self._q_unit = self.base_kw * self.dt_h / self.obj_scale_eur  # €/kWh → scaled cost per p.u.
        # Per-step data as affine maps, so that an update is one product and one scatter:
        # q = q_const + q_of_price @ [w, π⁺, −π⁻, c_q, c_qs]; b[b_rows] = the (8, M) block of injections/headroom.
        u = self._q_unit
        self.q_const = np.zeros(self.n_var)
        self.q_const[ix["cur"]] = cfg.curtailment_cost_eur_per_kwh * u
        self.q_const[ix["shd"]] = cfg.voll_eur_per_kwh * u
        self.q_const[ix["svh"]] = self.q_const[ix["svl"]] = cfg.voltage_penalty_eur_per_pu_h * self.dt_h / self.obj_scale_eur
        self.q_of_price = np.zeros((self.n_var, 5))
        self.q_of_price[ix["l"], 0] = self.r_pu * u
        self.q_of_price[ix["dpu"], 1] = u
        self.q_of_price[ix["dpd"], 2] = u
        self.q_of_price[np.r_[ix["dqu"], ix["dqd"]], 3] = u
        self.q_of_price[np.r_[ix["qsu"], ix["qsd"]], 4] = u
        self.b_rows = np.concatenate([self.row_pbal[mg_node], self.row_qbal[mg_node]]
                                     + [self.row_ub[k] for k in ("dpu", "dpd", "dqu", "dqd", "cur", "shd")])
        # the eight per-microgrid variable blocks dpu … qsd are contiguous in x
        self._mg_slice = slice(int(ix["dpu"][0]), int(ix["qsd"][-1]) + 1)
        self._clarabel = None
        # Per-step work on a handful of numbers is faster in plain Python than in NumPy (a NumPy call costs ~1 µs
        # whatever its size): scalar copies of what _update and _result read every step.
        self._r_list = self.r_pu.tolist()
        self._edge_from = [int(i) for i in frm]
        self._mg_node = [int(j) for j in mg_node]
        self._v0, self._l0, self._P0, self._Q0 = (int(ix[k][0]) for k in ("v", "l", "P", "Q"))
        self._svh0 = int(ix["svh"][0])  # svh and svl are adjacent: x[_svh0 : _svh0 + 2n]
        self._v_lo_sq, self._v_hi_sq = cfg.v_min_pu ** 2, cfg.v_max_pu ** 2
        # b[b_rows] = max(_b_map @ [p, q, P_grid, Q_grid] + _b_offset, 0) on all but the first 2M rows (p, q):
        # rows p, q, ΔP⁺ ≤ P_max − P_grid, ΔP⁻ ≤ P_grid − P_min, ΔQ⁺ ≤ Q_max − Q_grid, ΔQ⁻ ≤ Q_grid − Q_min,
        # curtailment ≤ max(p, 0), shedding ≤ max(−p, 0); everything in the solver's per unit
        eye, zero, u = np.eye(M), np.zeros((M, M)), 1.0 / self.base_kw
        self._b_map = u * np.block([
            [eye, zero, zero, zero], [zero, eye, zero, zero], [zero, zero, -eye, zero], [zero, zero, eye, zero],
            [zero, zero, zero, -eye], [zero, zero, zero, eye], [eye, zero, zero, zero], [-eye, zero, zero, zero]])
        self._b_offset = u * np.concatenate([np.zeros(2 * M), self.grid_p_max_kw, -self.grid_p_min_kw,
                                             self.grid_q_max_kvar, -self.grid_q_min_kvar, np.zeros(2 * M)])

    # ------------------------------------------------------------------ data update
    def _prices(self, price: float):
        cfg = self.cfg
        pi_up, pi_dn = balancing_prices(price, cfg.balancing_kappa)
        w = loss_weight(price, cfg.loss_price_floor_eur_per_kwh)
        c_q = reactive_cost(price, cfg)
        return pi_up, pi_dn, w, c_q, cfg.reactive_slack_cost_factor * c_q

    def _update(self, p_kw: list, q_kvar: list, price: float, p_grid_kw: list, q_grid_kvar: list):
        """Write the step's cost vector and right-hand side (inputs: lists of M floats)."""
        prices = self._prices(price)
        pi_up, pi_dn, w, c_q, c_qs = prices
        np.dot(self.q_of_price, (w, pi_up, -pi_dn, c_q, c_qs), out=self.q)
        self.q += self.q_const
        # b rows in b_rows order: p, q, the trade headroom left for ΔP⁺, ΔP⁻, ΔQ⁺, ΔQ⁻, then the curtailment and
        # shedding bounds; in the solver's per unit
        # (one affine map of [p, q, P_grid, Q_grid], the bounds clipped at 0)
        vals = self._b_map @ np.array(p_kw + q_kvar + p_grid_kw + q_grid_kvar) + self._b_offset
        tail = vals[2 * self.M:]
        np.maximum(tail, 0.0, out=tail)
        self.b[self.b_rows] = vals
        return prices

    # ------------------------------------------------------------------ solvers
    def _solve_clarabel(self):
        import clarabel

        if self._clarabel is None:
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
            self._clarabel = clarabel.DefaultSolver(P, self.q.copy(), self.A, self.b.copy(), cones, settings)
        else:
            self._clarabel.update(q=self.q, b=self.b)
        sol = self._clarabel.solve()
        if sol.status not in (clarabel.SolverStatus.Solved, clarabel.SolverStatus.AlmostSolved):
            raise RuntimeError(f"clarabel status {sol.status}")
        return sol.x, float(sol.solve_time), int(sol.iterations)  # x: a list of floats, what _result reads

    def _solve_ecos(self):
        import ecos

        if not hasattr(self, "_ecos_G"):
            self._ecos_Aeq = sp.csc_matrix(self.A[: self.m_eq])
            self._ecos_G = sp.csc_matrix(self.A[self.m_eq:])
            self._ecos_dims = {"l": self.m_nonneg, "q": [4] * self.E, "e": 0}
        sol = ecos.solve(self.q, self._ecos_G, self.b[self.m_eq:], self._ecos_dims, self._ecos_Aeq,
                         self.b[: self.m_eq], verbose=False, feastol=1e-9, abstol=1e-9, reltol=1e-9)
        info = sol["info"]
        if info["exitFlag"] not in (0, 10):  # 10: optimal to reduced accuracy, still far better than giving up
            raise RuntimeError(f"ecos exitFlag {info['exitFlag']} ({info.get('infostring', '')})")
        return np.asarray(sol["x"]), float(info["timing"]["runtime"]), int(info["iter"])

    def _run(self, name):
        return self._solve_clarabel() if name == "clarabel" else self._solve_ecos()

    # ------------------------------------------------------------------ public
    def _as_list(self, values, name: str) -> list:
        if type(values) is list and len(values) == self.M:  # the env's path: already M floats
            return values
        arr = np.asarray(values, float)
        if arr.size != self.M:
            raise ValueError(f"{name} needs {self.M} values (one per microgrid), got shape {arr.shape}")
        return arr.reshape(-1).tolist()

    def solve(self, p_kw, q_kvar, price_eur_per_kwh: float, p_grid_kw=None, q_grid_kvar=None) -> OPFResult:
        """Solve for one step.

        Args:
            p_kw, q_kvar: each microgrid's net injection into the network (surplus positive), shape (M,).
            price_eur_per_kwh: the real-time price c_t.
            p_grid_kw, q_grid_kvar: the lower layer's own trade with the main grid (default 0); the OPF's
                ΔP/ΔQ use the rest of each microgrid's trade limits.
        """
        p_kw, q_kvar = self._as_list(p_kw, "p_kw"), self._as_list(q_kvar, "q_kvar")
        p_grid_kw = [0.0] * self.M if p_grid_kw is None else self._as_list(p_grid_kw, "p_grid_kw")
        q_grid_kvar = [0.0] * self.M if q_grid_kvar is None else self._as_list(q_grid_kvar, "q_grid_kvar")
        prices = self._update(p_kw, q_kvar, float(price_eur_per_kwh), p_grid_kw, q_grid_kvar)
        errors = []
        t0 = time.perf_counter()
        chain = [self.cfg.solver]
        if self.cfg.fallback_solver not in ("none", self.cfg.solver):
            chain.append(self.cfg.fallback_solver)
        for k, name in enumerate(chain):
            try:
                x, solver_time, iters = self._run(name)
                if not math.isfinite(sum(x)) and not all(map(math.isfinite, x)):  # sum first: one C call
                    raise RuntimeError(f"{name} returned non-finite values")
            except Exception as exc:  # noqa: BLE001 - any solver trouble falls back, never raises
                errors.append(f"{name}: {exc}")
                continue
            code = STATUS_OPTIMAL if k == 0 else STATUS_FALLBACK_SOLVER
            return self._result(x, prices, code, "optimal", name, time.perf_counter() - t0,
                                solver_time, iters, errors)
        return self._safe_dispatch(p_kw, q_kvar, prices, time.perf_counter() - t0, errors)

    def _result(self, x, prices, code, status, solver, wall, solver_time, iters, errors) -> OPFResult:
        """The result record from the solver's solution ``x`` (solver per unit), in plain Python floats."""
        if type(x) is not list:
            x = np.asarray(x, float).tolist()
        M, bk, dt, cfg = self.M, self.base_kw, self.dt_h, self.cfg
        pi_up, pi_dn, w, c_q, c_qs = prices
        c_cur, c_shd = cfg.curtailment_cost_eur_per_kwh, cfg.voll_eur_per_kwh
        s = self._mg_slice.start
        # Blocks dpu, dpd, dqu, dqd, cur, shd, qsu, qsd (kW/kVar): microgrid m's value of block k is x[s + k·M + m].
        mg = x[s: s + 8 * M]
        cost, dp, dq, cur, shd, qsl = [], [], [], [], [], []
        for u_p, d_p, u_q, d_q, c_raw, s_raw, u_s, d_s in zip(*[mg[k * M: (k + 1) * M] for k in range(8)]):
            u_p, d_p, u_q, d_q, c_raw, s_raw, u_s, d_s = (u_p * bk, d_p * bk, u_q * bk, d_q * bk, c_raw * bk,
                                                          s_raw * bk, u_s * bk, d_s * bk)
            # Tiny negatives are solver round-off: costs and the reported curtailment/shedding use clipped values,
            # and ΔP absorbs what was clipped so the node balance stays closed (it opened by up to 3e-6 kW).
            c_m = c_raw if c_raw > 0.0 else 0.0
            s_m = s_raw if s_raw > 0.0 else 0.0
            dp.append(u_p - d_p + (c_m - c_raw) - (s_m - s_raw))
            dq.append(u_q - d_q)
            cur.append(c_m)
            shd.append(s_m)
            qsl.append(u_s - d_s)
            cost.append((pi_up * max(u_p, 0.0) - pi_dn * max(d_p, 0.0) + c_q * (max(u_q, 0.0) + max(d_q, 0.0))
                         + c_cur * c_m + c_shd * s_m + c_qs * (max(u_s, 0.0) + max(d_s, 0.0))) * dt)
        n, E = self.n, self.E
        v = x[self._v0: self._v0 + n]
        l = [val if val > 0.0 else 0.0 for val in x[self._l0: self._l0 + E]]
        P, Q = x[self._P0: self._P0 + E], x[self._Q0: self._Q0 + E]
        v_mg = [math.sqrt(max(v[j], 0.0)) for j in self._mg_node]
        losses_kw = sum([r * le for r, le in zip(self._r_list, l)]) * bk
        slack = sum([val for val in x[self._svh0: self._svh0 + 2 * n] if val > 0.0])  # svh, svl are adjacent
        v_pen = cfg.voltage_penalty_eur_per_pu_h * slack * dt
        loss_cost = w * losses_kw * dt
        gap = max([le - (p * p + q * q) / max(v[i], 1e-9) for le, p, q, i in zip(l, P, Q, self._edge_from)],
                  default=0.0) * self._gap_to_feeder_pu
        viol = max(max(v) - self._v_hi_sq, self._v_lo_sq - min(v), 0.0)
        return OPFResult(status, code, solver, loss_cost + sum(cost) + v_pen, loss_cost, v_pen, losses_kw, gap,
                         viol, wall, solver_time, iters, errors, (cost, dp, dq, cur, shd, qsl, v_mg),
                         (v, l, P, Q, bk, self.i_base_ka))

    def _safe_dispatch(self, p_kw, q_kvar, prices, wall, errors) -> OPFResult:
        """Last resort: settle each imbalance with the main grid within headroom, then curtail or shed."""
        bk = self.base_kw
        p_kw, q_kvar = np.asarray(p_kw, float), np.asarray(q_kvar, float)
        ub = {k: self.b[self.row_ub[k]] * bk for k in self.row_ub}
        dpu = np.minimum(np.maximum(-p_kw, 0.0), ub["dpu"])
        dpd = np.minimum(np.maximum(p_kw, 0.0), ub["dpd"])
        shd = np.maximum(-p_kw, 0.0) - dpu
        cur = np.maximum(p_kw, 0.0) - dpd
        dqu = np.minimum(np.maximum(-q_kvar, 0.0), ub["dqu"])
        dqd = np.minimum(np.maximum(q_kvar, 0.0), ub["dqd"])
        qsu = np.maximum(-q_kvar, 0.0) - dqu
        qsd = np.maximum(q_kvar, 0.0) - dqd
        x = np.zeros(self.n_var)
        for name, val in (("dpu", dpu), ("dpd", dpd), ("dqu", dqu), ("dqd", dqd), ("cur", cur), ("shd", shd),
                          ("qsu", qsu), ("qsd", qsd)):
            x[self.ix[name]] = val / bk
        x[self.ix["v"]] = 1.0
        res = self._result(x, prices, STATUS_SAFE_DISPATCH, "safe_dispatch", "none", wall, 0.0, 0, errors)
        res.relaxation_gap_pu = 0.0
        return res

    def solve_reference(self, p_kw, q_kvar, price_eur_per_kwh: float, p_grid_kw=None, q_grid_kvar=None,
                        solver: str = "ECOS", problem=None) -> OPFResult:
        """Solve the same step with the cvxpy reference formulation and report it like :meth:`solve`.

        ``problem`` (from :func:`build_cvxpy_opf`) is re-used when given (DPP: compiled once); without it the
        cvxpy problem is rebuilt and re-canonicalised for this call — the naive approach the fast path replaces.
        """
        import cvxpy as cp

        M = self.M
        p_kw, q_kvar = self._as_list(p_kw, "p_kw"), self._as_list(q_kvar, "q_kvar")
        p_grid_kw = [0.0] * M if p_grid_kw is None else self._as_list(p_grid_kw, "p_grid_kw")
        q_grid_kvar = [0.0] * M if q_grid_kvar is None else self._as_list(q_grid_kvar, "q_grid_kvar")
        prices = self._update(p_kw, q_kvar, float(price_eur_per_kwh), p_grid_kw, q_grid_kvar)
        if problem is None:
            problem = build_cvxpy_opf(self.net, self.cfg, M, self.dt_h, self.obj_scale_eur, self.solver_base_mva)
        prob, prm, var = problem
        limits = (self.grid_p_min_kw, self.grid_p_max_kw, self.grid_q_min_kvar, self.grid_q_max_kvar)
        set_cvxpy_params(prm, self.net, self.cfg, p_kw, q_kvar, price_eur_per_kwh, limits, p_grid_kw, q_grid_kvar,
                         base_mva=self.solver_base_mva)
        t0 = time.perf_counter()
        try:
            prob.solve(solver=getattr(cp, solver))
            error = None if prob.status == cp.OPTIMAL else f"cvxpy/{solver}: status {prob.status}"
        except cp.error.SolverError as exc:
            error = f"cvxpy/{solver}: {exc}"
        wall = time.perf_counter() - t0
        if error is not None:
            return self._safe_dispatch(p_kw, q_kvar, prices, wall, [error])
        x = np.zeros(self.n_var)
        for name, idx in self.ix.items():
            x[idx] = var[name].value
        stats = prob.solver_stats
        return self._result(x, prices, STATUS_OPTIMAL, "optimal", f"cvxpy/{solver}", wall,
                            float(stats.solve_time or 0.0), int(stats.num_iters or 0), [])

    def node_injections_kw(self, p_kw, q_kvar, result: OPFResult) -> tuple[np.ndarray, np.ndarray]:
        """Final injection at each node (kW, kVar) after the OPF's decisions — what an AC power flow needs."""
        pn, qn = np.zeros(self.n), np.zeros(self.n)
        mg = self.net.mg_node
        pn[mg] = np.asarray(p_kw) + result.delta_p_kw - result.curtailment_kw + result.shedding_kw
        qn[mg] = np.asarray(q_kvar) + result.delta_q_kvar + result.q_slack_kvar
        return pn, qn


# ---------------------------------------------------------------------- cvxpy reference formulation
def build_cvxpy_opf(network: Network, cfg: OPFConfig, n_mg: int | None = None, dt_h: float = 1.0,
                    obj_scale_eur: float = 100.0, base_mva: float | None = None):
    """The same OPF as a cvxpy DPP problem (the readable reference).

    Returns ``(problem, params, variables)``; parameters: ``p``, ``q`` (per unit, per microgrid), ``dpu_max``,
    ``dpd_max``, ``dqu_max``, ``dqd_max``, ``cur_max``, ``shd_max`` (per unit), and the € prices ``pi_up``,
    ``pi_dn``, ``w``, ``c_q``, ``c_qs`` (per kWh). The objective is in € divided by ``obj_scale_eur`` (order
    one for the solver, as in the fast path). Per-unit quantities are on ``base_mva`` (default: the feeder's).
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
    # incidence: C_out[j, e] = 1 if edge e leaves j; C_in[j, e] = 1 if edge e enters j; G[j, m] = 1 if mg m at j
    C_out = np.zeros((n, E))
    C_in = np.zeros((n, E))
    C_out[frm, np.arange(E)] = 1.0
    C_in[to, np.arange(E)] = 1.0
    G = np.zeros((n, M))
    G[network.mg_node, np.arange(M)] = 1.0
    prm = {k: cp.Parameter(M, name=k) for k in ("p", "q")}
    prm.update({k: cp.Parameter(M, nonneg=True, name=k) for k in
                ("dpu_max", "dpd_max", "dqu_max", "dqd_max", "cur_max", "shd_max")})
    prm.update({k: cp.Parameter(name=k) for k in ("pi_up", "pi_dn")})
    prm.update({k: cp.Parameter(nonneg=True, name=k) for k in ("w", "c_q", "c_qs")})
    v, l = cp.Variable(n, name="v"), cp.Variable(E, name="l")
    P, Q = cp.Variable(E, name="P"), cp.Variable(E, name="Q")
    var = {k: cp.Variable(M, nonneg=True, name=k) for k in ("dpu", "dpd", "dqu", "dqd", "cur", "shd", "qsu", "qsd")}
    svh, svl = cp.Variable(n, nonneg=True, name="svh"), cp.Variable(n, nonneg=True, name="svl")
    var.update(v=v, l=l, P=P, Q=Q, svh=svh, svl=svl)
    inj_p = G @ (prm["p"] + var["dpu"] - var["dpd"] - var["cur"] + var["shd"])
    inj_q = G @ (prm["q"] + var["dqu"] - var["dqd"] + var["qsu"] - var["qsd"])
    cons = [
        v[0] == 1.0,
        C_out @ P - C_in @ (P - cp.multiply(r, l)) == inj_p,  # eq. 11
        C_out @ Q - C_in @ (Q - cp.multiply(x, l)) == inj_q,  # eq. 12
        v[to] == v[frm] - 2 * (cp.multiply(r, P) + cp.multiply(x, Q)) + cp.multiply(r ** 2 + x ** 2, l),  # eq. 13
        v <= cfg.v_max_pu ** 2 + svh, v >= cfg.v_min_pu ** 2 - svl,  # eq. 16, softened
        var["dpu"] <= prm["dpu_max"], var["dpd"] <= prm["dpd_max"],  # eq. 17
        var["dqu"] <= prm["dqu_max"], var["dqd"] <= prm["dqd_max"],
        var["cur"] <= prm["cur_max"], var["shd"] <= prm["shd_max"],
    ]
    for e in range(E):  # eq. 3/14
        cons.append(cp.SOC(l[e] + v[frm[e]], cp.hstack([2 * P[e], 2 * Q[e], l[e] - v[frm[e]]])))
    if cfg.current_limit_ka is not None:
        cons.append(l <= (cfg.current_limit_ka / i_base_ka) ** 2)  # eq. 15
    obj = dt_h * bk * (prm["w"] * (r @ l) + prm["pi_up"] * cp.sum(var["dpu"]) - prm["pi_dn"] * cp.sum(var["dpd"])
                       + prm["c_q"] * cp.sum(var["dqu"] + var["dqd"]) + cfg.voll_eur_per_kwh * cp.sum(var["shd"])
                       + cfg.curtailment_cost_eur_per_kwh * cp.sum(var["cur"])
                       + prm["c_qs"] * cp.sum(var["qsu"] + var["qsd"]))
    obj = obj + dt_h * cfg.voltage_penalty_eur_per_pu_h * cp.sum(svh + svl)
    problem = cp.Problem(cp.Minimize(obj / obj_scale_eur), cons)
    problem._mmgrid_obj_scale_eur = obj_scale_eur  # noqa: SLF001 - read back by solve_cvxpy_opf
    problem._mmgrid_base_mva = base_mva  # noqa: SLF001
    return problem, prm, var


def set_cvxpy_params(prm, network: Network, cfg: OPFConfig, p_kw, q_kvar, price, grid_limits, p_grid_kw=None,
                     q_grid_kvar=None, base_mva: float | None = None):
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
    prm["cur_max"].value = np.maximum(p_kw, 0) / bk
    prm["shd_max"].value = np.maximum(-p_kw, 0) / bk
    pi_up, pi_dn = balancing_prices(price, cfg.balancing_kappa)
    c_q = reactive_cost(price, cfg)
    prm["pi_up"].value, prm["pi_dn"].value = pi_up, pi_dn
    prm["w"].value = loss_weight(price, cfg.loss_price_floor_eur_per_kwh)
    prm["c_q"].value, prm["c_qs"].value = c_q, cfg.reactive_slack_cost_factor * c_q


def solve_cvxpy_opf(network: Network, cfg: OPFConfig, p_kw, q_kvar, price, grid_limits, p_grid_kw=None,
                    q_grid_kvar=None, solver: str = "ECOS", problem=None, dt_h: float = 1.0) -> dict:
    """Solve the reference formulation; returns a dict of decisions in kW/kVar and the objective in €.

    Pass ``problem=(problem, params, variables)`` from :func:`build_cvxpy_opf` to reuse a compiled problem.
    """
    import cvxpy as cp

    if problem is None:
        problem = build_cvxpy_opf(network, cfg, len(np.atleast_1d(p_kw)), dt_h)
    prob, prm, var = problem
    base_mva = prob._mmgrid_base_mva
    set_cvxpy_params(prm, network, cfg, p_kw, q_kvar, price, grid_limits, p_grid_kw, q_grid_kvar, base_mva)
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
        "v_pu": np.sqrt(np.maximum(v, 0)), "p_flow_kw": P * bk, "q_flow_kvar": Q * bk,
        "losses_kw": float(r_pu @ l * bk),
        "relaxation_gap_pu": float(np.max(l - (P ** 2 + Q ** 2) / v[frm])) * to_feeder_pu if network.n_edges else 0.0,
    }

