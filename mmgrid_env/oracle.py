"""The perfect-foresight oracle (docs/model.md, "The oracle"): a whole day, all microgrids, as one convex program.

Given a configuration and a day, :func:`solve_day` solves the same model as the environment with perfect knowledge
of the day's PV, wind, load and prices:

* the lower layer of every microgrid at every hour — P_MT, P_cha, P_dis (separate non-negative variables), P_grid,
  Q_grid — with the SoC dynamics SoC_{t+1} = SoC_t + (η_cha·P_cha − P_dis/η_dis)·Δt/E linking the hours, the hard
  physical limits SoC ∈ [0, 1] and the device and trade limits;
* the upper layer at every hour, exactly as :mod:`mmgrid_env.opf`: DistFlow (eq. 11–13), the cone (eq. 3/14),
  soft voltage limits, the optional current limit, balancing trades ΔP = ΔP⁺ − ΔP⁻ and ΔQ within what the
  lower layer left of the trade limits, curtailment, load shedding and reactive slack;
* the same costs: F_MG (selling earns c − d|c|), F_MT = a·P² + b·P + c every hour, F_ESS, the OPF objective
  (loss weight w_t, π⁺/π⁻, c_q, VOLL, curtailment, reactive slack, voltage penalty) and the soft SoC penalty
  β·cons(SoC_{t+1}).

The objective is the negative team return of the environment, summed over the day::

    J = Σ_t [ α·Σ_i (F_MG + F_MT + F_ESS) + F_up + β·Σ_i cons(SoC_{i,t+1}) ]        (€)

(with the default α = 1: the € cost plus the SoC penalty). It is a lower bound on J for every policy on that day,
because every policy's trajectory is a feasible point of the program (see "Exactness" below for the two
relaxations). The objective is divided by a scale of order one hundred € for the solver.

Exactness. Two constraints of the environment are not convex and are relaxed, then checked on the solution:

1. The env bounds curtailment by the microgrid's own generation (cur ≤ P_PV + P_WT, as the oracle does), spill by
   its surplus and shedding by its deficit. The oracle asks only spill, shed ≥ 0: spilling at a node in deficit (or
   shedding at a node in surplus) is never cheaper than doing it locally, so the optimum satisfies the env's
   bounds; :attr:`OracleResult.bound_violation_kw` reports the largest excess (≈ 0).
2. P_ESS = P_dis − P_cha is one number in the env; the oracle could charge and discharge at once. With c_ESS > 0 and
   η < 1 that only wastes energy and money, so it does not happen at the optimum unless the program wants to burn
   stored energy; :attr:`OracleResult.ess_simultaneous_kw` reports max_t min(P_cha, P_dis) (≈ 0).

Replay. Given the lower-layer decisions, the rest of the program splits into one OPF per hour, each exactly the
env's OPF, so replaying the oracle's set-points through the environment (:func:`actions_from_dispatch`,
:func:`replay`) reproduces the oracle's cost up to solver tolerance (tests check 0.1 %).

Caching: pass ``cache_dir`` to store each solved day as ``oracle_<config-hash>_day<k>.npz`` and reuse it.

Example::

    from mmgrid_env import make_config, solve_day, replay
    res = solve_day(make_config("paper"), day=4)
    print(res.objective_eur, res.status, res.solve_time_s)
    env_cost = replay(res, "paper").objective_eur   # the same number, measured by the env
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .config import EnvConfig, make_config
from .data import HOURS_PER_DAY, Dataset, load_dataset
from . import devices
from .devices import Quantities, cost_term_names, fleet_from_config, lower_layer_costs, soc_penalty
from .network import build_network
from .opf import sharing_prices, step_prices

__all__ = ["OracleResult", "DayOracle", "solve_day", "solve_days", "config_hash", "actions_from_dispatch",
           "replay", "ReplayResult", "OraclePolicy", "ORACLE_VERSION", "DISPATCH_KEYS"]

ORACLE_VERSION = "2"
"""Bumped whenever the formulation changes; part of the cache key."""

DISPATCH_KEYS = (
    "p_pv_kw", "p_wt_kw", "p_load_kw", "q_load_kvar",
    "p_mt_kw", "p_ess_kw", "p_charge_kw", "p_discharge_kw", "p_grid_kw", "q_grid_kvar", "p_net_kw", "q_net_kvar",
    "delta_p_kw", "delta_q_kvar", "curtailment_kw", "shedding_kw", "spill_kw", "q_slack_kvar", "soc",
    "cost_grid_eur", "cost_mt_eur", "cost_ess_eur", "soc_violation", "cost_balancing_eur",
)
"""Per-microgrid arrays of :attr:`OracleResult.dispatch`, each of shape (24, N). ``soc`` is SoC after the hour
(SoC_{t+1}); the day's initial SoC is :attr:`OracleResult.soc_init`."""

SYSTEM_DISPATCH_KEYS = ("price_eur_per_kwh", "loss_kw", "loss_cost_eur", "voltage_penalty_eur", "cost_upper_eur",
                        "cost_total_eur", "relaxation_gap_pu")
"""Per-hour arrays (shape (24,)) of :attr:`OracleResult.dispatch`."""


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class OracleResult:
    """The optimum of one day. Powers in kW/kVar with the env's signs, costs in €."""

    day: int
    date: str
    status: str
    """cvxpy's status (``"optimal"``, ``"optimal_inaccurate"``, …)."""
    solver: str
    objective_eur: float
    """J = Σ_t [α·lower-layer € + upper-layer € + β·Σ cons(SoC)] = −(team return): what the oracle minimises and
    what a policy's optimality gap compares with. Recomputed from the solution with the env's formulas."""
    cost_eur: float
    """The € cost alone: Σ_t (lower-layer € + upper-layer €) = Σ of the env's ``cost_total_eur``."""
    soc_penalty_eur: float
    """β·Σ_t Σ_i cons(SoC_{i,t+1})."""
    solver_objective_eur: float
    """The solver's optimal value (× scale), for a consistency check against ``objective_eur``."""
    dispatch: dict = field(repr=False)
    """``DISPATCH_KEYS`` → (24, N) arrays and ``SYSTEM_DISPATCH_KEYS`` → (24,) arrays; also ``v_pu`` (24, nodes),
    ``p_flow_kw``, ``q_flow_kvar`` (24, edges)."""
    soc_init: np.ndarray = field(repr=False)
    relaxation_gap_pu: float = 0.0
    """max over hours and edges of l − (P² + Q²)/v (p.u.): 0 means the SOCP relaxation is exact."""
    ess_simultaneous_kw: float = 0.0
    """max over hours and microgrids of min(P_cha, P_dis): 0 means no simultaneous charge and discharge."""
    bound_violation_kw: float = 0.0
    """Largest excess of curtailment over max(p_i, 0) or of shedding over max(−p_i, 0) (the env's bounds)."""
    solve_time_s: float = 0.0
    """Wall time of the solve call (cvxpy + solver) for this day."""
    build_time_s: float = 0.0
    """Time to build (compile) the program; shared by all days of one :class:`DayOracle`, 0 when reused."""
    config_hash: str = ""
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "optimal_inaccurate")

    def actions(self, env, hour: int) -> dict:
        """The env actions that request this dispatch at ``hour`` (see :func:`actions_from_dispatch`)."""
        return actions_from_dispatch(env, self.dispatch, hour)

    def summary(self) -> dict:
        """Scalars only (for tables and JSON)."""
        return {"day": self.day, "date": self.date, "status": self.status, "solver": self.solver,
                "objective_eur": self.objective_eur, "cost_eur": self.cost_eur,
                "soc_penalty_eur": self.soc_penalty_eur, "solver_objective_eur": self.solver_objective_eur,
                "relaxation_gap_pu": self.relaxation_gap_pu, "ess_simultaneous_kw": self.ess_simultaneous_kw,
                "bound_violation_kw": self.bound_violation_kw, "solve_time_s": self.solve_time_s,
                "build_time_s": self.build_time_s, "config_hash": self.config_hash}

    # -- persistence
    def save(self, path: str) -> None:
        arrays = {f"d_{k}": np.asarray(v) for k, v in self.dispatch.items()}
        meta = self.summary()
        np.savez_compressed(path, soc_init=self.soc_init, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str) -> "OracleResult":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            dispatch = {k[2:]: z[k].copy() for k in z.files if k.startswith("d_")}
            soc_init = z["soc_init"].copy()
        return cls(day=int(meta["day"]), date=meta["date"], status=meta["status"], solver=meta["solver"],
                   objective_eur=float(meta["objective_eur"]), cost_eur=float(meta["cost_eur"]),
                   soc_penalty_eur=float(meta["soc_penalty_eur"]),
                   solver_objective_eur=float(meta["solver_objective_eur"]), dispatch=dispatch,
                   soc_init=soc_init, relaxation_gap_pu=float(meta["relaxation_gap_pu"]),
                   ess_simultaneous_kw=float(meta["ess_simultaneous_kw"]),
                   bound_violation_kw=float(meta["bound_violation_kw"]), solve_time_s=float(meta["solve_time_s"]),
                   build_time_s=float(meta["build_time_s"]), config_hash=meta["config_hash"], from_cache=True)


# ---------------------------------------------------------------------------------------------------- hashing
def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "dataset"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _dataset_digest(ds: Dataset) -> str:
    h = hashlib.sha256()
    for a in (ds.pv_pu, ds.wind_pu, ds.load_pu, ds.price_eur_per_kwh, *(ds.profiles[k] for k in sorted(ds.profiles))):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update("\n".join(ds.days).encode())
    return h.hexdigest()


def config_hash(config: EnvConfig | str | None = None) -> str:
    """A stable hash of everything that determines the oracle's answer: the model config (every field that
    matters), the dataset's contents and :data:`ORACLE_VERSION`. Observation-only fields are included too
    (harmless: a different hash only means a separate cache entry)."""
    cfg = make_config(config) if not isinstance(config, EnvConfig) else config
    payload = {"config": _jsonable(cfg), "dataset": _dataset_digest(load_dataset(cfg.dataset)),
               "version": ORACLE_VERSION,
               "cost_terms": [f"{t.name}:{getattr(t.eur_per_h, '__qualname__', t.eur_per_h)}"
                              for t in devices.LOWER_COST_TERMS]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------- the program
class _Tiled:
    """A fleet's ratings repeated over the day's hours: attribute → array (T, M) (what a cost term reads)."""

    def __init__(self, fleet, hours: int):
        self._fleet, self._hours = fleet, hours

    def __getattr__(self, name):
        return np.tile(np.asarray(getattr(self._fleet, name), float), (self._hours, 1))


class DayOracle:
    """The day-ahead program for one configuration, compiled once (cvxpy DPP), re-solved per day.

    Args:
        config: an :class:`EnvConfig` or preset name (default ``"paper"``), plus ``overrides`` as in
            :func:`make_config` (the same keywords the env takes).
        solver: ``"CLARABEL"`` (default) or ``"ECOS"``; the other one is tried if the first fails.
        obj_scale_eur: the objective is divided by this (default: 0.1 €/kWh × Σ trade limits × Δt × 24 / 10,
            of order 100 €) so that the solver sees numbers of order one.
    """

    def __init__(self, config: EnvConfig | str | None = None, solver: str = "CLARABEL",
                 obj_scale_eur: float | None = None, **overrides):
        import cvxpy as cp

        t0 = time.perf_counter()
        cfg = make_config(config, **overrides) if (overrides or not isinstance(config, EnvConfig)) else config
        self.config = cfg
        self.solver = solver.upper()
        self.dataset = load_dataset(cfg.dataset)
        self.fleet = f = fleet_from_config(cfg)
        self.network = net = build_network(f.bus.tolist(), aggregation=cfg.opf.impedance_aggregation,
                                           topology=cfg.opf.topology)
        self.hash = config_hash(cfg)
        T, M, n, E = HOURS_PER_DAY, f.n, net.n_nodes, net.n_edges
        dt, bk, o = cfg.dt_h, net.base_kw, cfg.opf
        self.T, self.M = T, M
        trade_kw = float(np.sum(np.maximum(np.abs(f.grid_p_min_kw), np.abs(f.grid_p_max_kw))))
        self.obj_scale_eur = float(obj_scale_eur or max(trade_kw, 1.0) * 0.1 * dt * T / 10.0)
        r, x = net.r_pu, net.x_pu
        C_out, C_in, G = (a.T for a in net.incidence())  # (edges, nodes), (edges, nodes), (microgrids, nodes)
        row = lambda a: np.tile(np.asarray(a, float), (T, 1))  # noqa: E731 - (M,) → (T, M)

        # --- parameters (all per unit of base_kw for powers; € per kWh for prices)
        par = {
            "base_p": cp.Parameter((T, M), name="base_p"),  # PV + WT − load (p.u.)
            "q_load": cp.Parameter((T, M), name="q_load"),
            "c": cp.Parameter((T, M), name="c"),  # price
            "export_markup": cp.Parameter((T, M), nonneg=True, name="export_markup"),  # d|c|
            "pi_up": cp.Parameter((T, M), name="pi_up"),
            "pi_dn": cp.Parameter((T, M), name="pi_dn"),
            "c_q": cp.Parameter((T, M), nonneg=True, name="c_q"),
            "c_qs": cp.Parameter((T, M), nonneg=True, name="c_qs"),
            "w": cp.Parameter((T, E), nonneg=True, name="w") if E else None,
            "soc0": cp.Parameter(M, name="soc0"),
            "ren": cp.Parameter((T, M), nonneg=True, name="ren"),  # PV + WT: what curtailment may take (p.u.)
            # full feeder: every bus's own load this hour (p.u.)
            "bg_p": cp.Parameter((T, n), name="bg_p") if net.topology == "feeder" else None,
            "bg_q": cp.Parameter((T, n), name="bg_q") if net.topology == "feeder" else None,
        }
        self.par = par
        # --- variables
        V = {k: cp.Variable((T, M), name=k) for k in ("p_mt", "p_grid", "q_grid")}
        V.update({k: cp.Variable((T, M), nonneg=True, name=k) for k in
                  ("cha", "dis", "dpu", "dpd", "dqu", "dqd", "cur", "shd", "spl", "qsu", "qsd")})
        V["soc"] = cp.Variable((T + 1, M), name="soc")
        V["v"] = cp.Variable((T, n), name="v")
        V["v_slack_hi"] = cp.Variable((T, n), nonneg=True, name="v_slack_hi")
        V["v_slack_lo"] = cp.Variable((T, n), nonneg=True, name="v_slack_lo")
        if E:
            V["l"] = cp.Variable((T, E), name="l")
            V["P"] = cp.Variable((T, E), name="P")
            V["Q"] = cp.Variable((T, E), name="Q")
        self.var = V
        pu = lambda a: row(np.asarray(a, float) / bk)  # noqa: E731 - kW limits → (T, M) p.u.
        e_cap_pu_h = f.ess_capacity_kwh / bk  # p.u.·h
        p_net = par["base_p"] + V["p_mt"] + V["dis"] - V["cha"] + V["p_grid"]
        q_net = V["q_grid"] - par["q_load"]
        cons = [
            V["p_mt"] >= pu(f.mt_min_kw), V["p_mt"] <= pu(f.mt_max_kw),
            V["cha"] <= pu(f.ess_charge_max_kw), V["dis"] <= pu(f.ess_discharge_max_kw),
            V["p_grid"] >= pu(f.grid_p_min_kw), V["p_grid"] <= pu(f.grid_p_max_kw),
            V["q_grid"] >= pu(f.grid_q_min_kvar), V["q_grid"] <= pu(f.grid_q_max_kvar),
            V["soc"][0] == par["soc0"],
            V["soc"][1:] == V["soc"][:-1] + (cp.multiply(row(f.ess_eta_charge / e_cap_pu_h * dt), V["cha"])
                                            - cp.multiply(row(1.0 / (f.ess_eta_discharge * e_cap_pu_h) * dt),
                                                          V["dis"])),
            V["soc"] >= 0.0, V["soc"] <= 1.0,  # physical limits: hard (eq. 5)
            # balancing trades within what the lower layer left of the trade limits (eq. 7–8, 17)
            V["dpu"] <= pu(f.grid_p_max_kw) - V["p_grid"], V["dpd"] <= V["p_grid"] - pu(f.grid_p_min_kw),
            V["dqu"] <= pu(f.grid_q_max_kvar) - V["q_grid"], V["dqd"] <= V["q_grid"] - pu(f.grid_q_min_kvar),
            V["cur"] <= par["ren"],  # only generation can be curtailed; the rest of a surplus is spilled
        ]
        adjust = - V["cur"] + V["shd"] - V["spl"]
        inj_q = (q_net + V["dqu"] - V["dqd"] + V["qsu"] - V["qsd"]) @ G
        feeder = net.topology == "feeder"
        if feeder:  # each microgrid injects its own net (its trades come through the substation); ΔP settles
            inj_p = (p_net - V["p_grid"] + adjust) @ G - par["bg_p"]  # (T, n)
            inj_q = inj_q - par["bg_q"]
            cons.append(V["dpu"] - V["dpd"] + p_net + adjust == 0)
            if o.sharing:  # parts of ΔP⁺/ΔP⁻ traded between microgrids, hour by hour: what they buy, they sell
                V["share_in"], V["share_out"] = cp.Variable((T, M), nonneg=True), cp.Variable((T, M), nonneg=True)
                cons += [V["share_in"] <= V["dpu"], V["share_out"] <= V["dpd"],
                         cp.sum(V["share_in"], axis=1) == cp.sum(V["share_out"], axis=1)]
        else:
            inj_p = (p_net + V["dpu"] - V["dpd"] + adjust) @ G  # (T, n)
        nodes = slice(1, None) if feeder else slice(None)  # the substation's balance is free
        cons += [V["v"][:, 0] == o.substation_v_pu ** 2,
                 V["v"] <= o.v_max_pu ** 2 + V["v_slack_hi"], V["v"] >= o.v_min_pu ** 2 - V["v_slack_lo"]]
        if E:
            l, P, Q, v = V["l"], V["P"], V["Q"], V["v"]
            r_row, x_row = np.tile(r, (T, 1)), np.tile(x, (T, 1))
            cons += [
                (P @ C_out - (P - cp.multiply(r_row, l)) @ C_in)[:, nodes] == inj_p[:, nodes],  # eq. 11
                (Q @ C_out - (Q - cp.multiply(x_row, l)) @ C_in)[:, nodes] == inj_q[:, nodes],  # eq. 12
                v @ C_in.T == v @ C_out.T - 2 * (cp.multiply(r_row, P) + cp.multiply(x_row, Q))
                + cp.multiply(np.tile(r ** 2 + x ** 2, (T, 1)), l),  # eq. 13
            ]
            v_from = v @ C_out.T  # (T, E)
            cons.append(cp.SOC(cp.vec(l + v_from, order="C"),
                               cp.vstack([cp.vec(2 * P, order="C"), cp.vec(2 * Q, order="C"),
                                          cp.vec(l - v_from, order="C")]), axis=0))  # eq. 3/14
            if o.current_limit_ka is not None:
                cons.append(l <= (o.current_limit_ka / net.i_base_ka) ** 2)  # eq. 15
        else:
            cons += [inj_p == 0, inj_q == 0]
        # --- objective (€)
        # the lower layer's € terms, as the env computes them (devices.LOWER_COST_TERMS), on (T, M) expressions
        x = Quantities(V["p_mt"] * bk, V["p_grid"] * bk, cp.pos(-V["p_grid"]) * bk, V["cha"] * bk, V["dis"] * bk,
                       par["c"], par["export_markup"], cp.pos(V["p_grid"]) * bk, o.grid_fee_eur_per_kwh,
                       o.export_fee_eur_per_kwh)
        ratings = _Tiled(f, T)
        f_lower = dt * cp.sum(sum(term.eur_per_h(ratings, x, cp.multiply) for term in devices.LOWER_COST_TERMS))
        f_up = bk * dt * (cp.sum(cp.multiply(par["pi_up"], V["dpu"])) - cp.sum(cp.multiply(par["pi_dn"], V["dpd"]))
                          + cp.sum(cp.multiply(par["c_q"], V["dqu"] + V["dqd"]))
                          + o.voll_eur_per_kwh * cp.sum(V["shd"] + V["spl"])
                          + o.curtailment_cost_eur_per_kwh * cp.sum(V["cur"])
                          + cp.sum(cp.multiply(par["c_qs"], V["qsu"] + V["qsd"])))
        f_up = f_up + dt * o.voltage_penalty_eur_per_pu_h * cp.sum(V["v_slack_hi"] + V["v_slack_lo"])
        if "share_in" in V:  # c + fee − π⁺ per kWh bought from a neighbour, π⁻ − c per kWh sold to one
            f_up = f_up + bk * dt * (cp.sum(cp.multiply(par["c"] + o.sharing_fee_eur_per_kwh - par["pi_up"],
                                                        V["share_in"]))
                                     + cp.sum(cp.multiply(par["pi_dn"] - par["c"], V["share_out"])))
        if E:
            f_up = f_up + bk * dt * cp.sum(cp.multiply(par["w"], cp.multiply(np.tile(r, (T, 1)), V["l"])))
        soc_next = V["soc"][1:]
        cons_soc = cp.pos(soc_next - row(f.soc_max)) + cp.pos(row(f.soc_min) - soc_next)
        J = cfg.alpha * f_lower + f_up + cfg.beta * cp.sum(cons_soc)
        self.problem = cp.Problem(cp.Minimize(J / self.obj_scale_eur), cons)
        self._compiled = False
        self.build_time_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ data
    def exogenous(self, day: int):
        """(pv_kw, wt_kw, load_kw, q_load_kvar) of shape (24, N) and prices (24,) for ``day``, as the env sees them."""
        ds, f = self.dataset, self.fleet
        if not 0 <= day < ds.n_days:
            raise ValueError(f"day={day} is out of range: the dataset has days 0..{ds.n_days - 1}")
        mgs = self.config.microgrids  # each microgrid's own profiles (columns of the dataset)
        pv = np.stack([ds.column(mg.pv_profile)[day] for mg in mgs], axis=1) * f.pv_kwp
        wt = np.stack([ds.column(mg.wind_profile)[day] for mg in mgs], axis=1) * f.wt_kw
        load = np.stack([ds.column(mg.load_profile)[day] for mg in mgs], axis=1) * f.load_peak_kw
        return pv, wt, load, load * f.tan_phi, ds.price_eur_per_kwh[day].astype(float)

    def _set_params(self, day: int, soc0: np.ndarray):
        cfg, M, bk = self.config, self.M, self.network.base_kw
        pv, wt, load, q_load, price = self.exogenous(day)
        par = self.par
        par["base_p"].value = (pv + wt - load) / bk
        par["q_load"].value = q_load / bk
        par["ren"].value = (pv + wt) / bk
        if par["bg_p"] is not None:  # the feeder's own load: nominal × scale × the dataset's load profile
            scale = cfg.opf.background_load_scale * self.dataset.load_pu[day]
            par["bg_p"].value = np.outer(scale, self.network.background_p_kw) / bk
            par["bg_q"].value = np.outer(scale, self.network.background_q_kvar) / bk
        par["c"].value = np.repeat(price[:, None], M, axis=1)
        par["export_markup"].value = np.repeat(cfg.export_discount * np.abs(price)[:, None], M, axis=1)
        prices = np.array([step_prices(c, cfg.opf) for c in price])  # (T, 5): π⁺, π⁻, w, c_q, c_qs
        for k, name in ((0, "pi_up"), (1, "pi_dn"), (3, "c_q"), (4, "c_qs")):
            par[name].value = np.repeat(prices[:, k:k + 1], M, axis=1)
        if par["w"] is not None:
            par["w"].value = np.repeat(prices[:, 2:3], self.network.n_edges, axis=1)
        par["soc0"].value = np.asarray(soc0, float)
        return pv, wt, load, q_load, price

    # ------------------------------------------------------------------ solve
    def _solve_with(self, name: str):
        import cvxpy as cp

        kwargs: dict = {}
        if name == "ECOS":
            kwargs = {"max_iters": 500, "abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9}
        elif name == "CLARABEL":
            kwargs = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 500}
        self.problem.solve(solver=getattr(cp, name), **kwargs)
        return self.problem.status

    def solve(self, day: int, soc_init: Sequence[float] | None = None) -> OracleResult:
        """Solve ``day`` (dataset index). ``soc_init`` defaults to the config's ``soc_init`` (as ``env.reset``)."""
        f = self.fleet
        soc0 = f.soc_init.copy() if soc_init is None else np.asarray(soc_init, float).reshape(f.n)
        pv, wt, load, q_load, price = self._set_params(day, soc0)
        chain = [self.solver] + [s for s in ("CLARABEL", "ECOS") if s != self.solver]
        t0 = time.perf_counter()
        status, used, errors = "solver_error", "none", []
        for name in chain:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    status = self._solve_with(name)
                used = name
                if status in ("optimal", "optimal_inaccurate"):
                    break
            except Exception as exc:  # noqa: BLE001 - try the next solver
                errors.append(f"{name}: {exc}")
        solve_time = time.perf_counter() - t0
        build = 0.0 if self._compiled else self.build_time_s
        self._compiled = True
        if status not in ("optimal", "optimal_inaccurate"):
            raise RuntimeError(f"oracle: day {day} could not be solved (status {status}; {errors})")
        return self._result(day, soc0, pv, wt, load, q_load, price, status, used, solve_time, build)

    def _result(self, day, soc0, pv, wt, load, q_load, price, status, solver, solve_time, build) -> OracleResult:
        cfg, f, net, V = self.config, self.fleet, self.network, self.var
        bk, dt, o, T = net.base_kw, cfg.dt_h, cfg.opf, self.T
        val = lambda k: np.asarray(V[k].value, float)  # noqa: E731
        nn = lambda k: np.maximum(val(k), 0.0) * bk  # noqa: E731 - non-negative variable, kW
        p_mt, p_grid, q_grid = val("p_mt") * bk, val("p_grid") * bk, val("q_grid") * bk
        cha, dis = nn("cha"), nn("dis")
        dpu, dpd, dqu, dqd = nn("dpu"), nn("dpd"), nn("dqu"), nn("dqd")
        cur, shd, spl, qsu, qsd = nn("cur"), nn("shd"), nn("spl"), nn("qsu"), nn("qsd")
        shared_in, shared_out = (nn("share_in"), nn("share_out")) if "share_in" in V else (None, None)
        soc = val("soc")
        p_ess = dis - cha
        p_net = pv + wt + p_mt + p_ess + p_grid - load
        q_net = q_grid - q_load
        d = {"p_pv_kw": pv, "p_wt_kw": wt, "p_load_kw": load, "q_load_kvar": q_load, "p_mt_kw": p_mt,
             "p_ess_kw": p_ess, "p_charge_kw": cha, "p_discharge_kw": dis, "p_grid_kw": p_grid,
             "q_grid_kvar": q_grid, "p_net_kw": p_net, "q_net_kvar": q_net, "delta_p_kw": dpu - dpd,
             "delta_q_kvar": dqu - dqd, "curtailment_kw": cur, "shedding_kw": shd, "spill_kw": spl,
             "q_slack_kvar": qsu - qsd,
             "shared_kw": np.zeros_like(dpu) if shared_in is None else shared_in - shared_out,
             "soc": soc[1:]}
        # costs with the env's own formulas
        names = cost_term_names()
        terms = {k: np.zeros((T, f.n)) for k in names}
        bal = np.zeros((T, f.n))
        loss_kw, loss_cost, v_pen = np.zeros(T), np.zeros(T), np.zeros(T)
        gap = np.zeros(T)
        v = val("v")
        svh, svl = np.maximum(val("v_slack_hi"), 0), np.maximum(val("v_slack_lo"), 0)
        if net.n_edges:
            l, P, Q = np.maximum(val("l"), 0.0), val("P"), val("Q")
        for t in range(T):
            c = float(price[t])
            for k, eur in zip(names, lower_layer_costs(f, c, p_mt[t], p_grid[t], cha[t], dis[t], dt,
                                                        cfg.export_discount, o.grid_fee_eur_per_kwh,
                                                        o.export_fee_eur_per_kwh)):
                terms[k][t] = eur
            pi_up, pi_dn, w, c_q, c_qs = step_prices(c, o)
            bal[t] = (pi_up * dpu[t] - pi_dn * dpd[t] + c_q * (dqu[t] + dqd[t]) + o.voll_eur_per_kwh * (shd[t] + spl[t])
                      + o.curtailment_cost_eur_per_kwh * cur[t] + c_qs * (qsu[t] + qsd[t])) * dt
            if shared_in is not None:
                s_in, s_out = sharing_prices(c, pi_up, pi_dn, o)
                bal[t] += (s_in * shared_in[t] + s_out * shared_out[t]) * dt
            v_pen[t] = o.voltage_penalty_eur_per_pu_h * float(np.sum(svh[t] + svl[t])) * dt
            if net.n_edges:
                loss_kw[t] = float(net.r_pu @ l[t] * bk)
                loss_cost[t] = w * loss_kw[t] * dt
                vf = np.maximum(v[t, net.edge_from], 1e-9)
                gap[t] = float(np.max(l[t] - (P[t] ** 2 + Q[t] ** 2) / vf))
        cons = soc_penalty(f, soc[1:])
        upper = loss_cost + bal.sum(axis=1) + v_pen
        lower = sum(terms.values())
        total = lower.sum(axis=1) + upper
        d.update(terms)
        d.update(soc_violation=cons,
                 cost_balancing_eur=bal, price_eur_per_kwh=price, loss_kw=loss_kw, loss_cost_eur=loss_cost,
                 voltage_penalty_eur=v_pen, cost_upper_eur=upper, cost_total_eur=total, relaxation_gap_pu=gap,
                 v_pu=np.sqrt(np.maximum(v, 0.0)))
        if net.n_edges:
            d.update(p_flow_kw=P * bk, q_flow_kvar=Q * bk)
        soc_pen = cfg.beta * float(cons.sum())
        objective = cfg.alpha * float(lower.sum()) + float(upper.sum()) + soc_pen
        viol = max(float(np.max(spl - np.maximum(p_net, 0.0))), float(np.max(shd - np.maximum(-p_net, 0.0))), 0.0)
        return OracleResult(
            day=int(day), date=self.dataset.days[day], status=status, solver=solver, objective_eur=objective,
            cost_eur=float(total.sum()), soc_penalty_eur=soc_pen,
            solver_objective_eur=float(self.problem.value) * self.obj_scale_eur, dispatch=d, soc_init=soc0,
            relaxation_gap_pu=float(gap.max()), ess_simultaneous_kw=float(np.max(np.minimum(cha, dis))),
            bound_violation_kw=viol, solve_time_s=solve_time, build_time_s=build, config_hash=self.hash)


# ---------------------------------------------------------------------------------------------------- functions
_ORACLES: dict[tuple[str, str], DayOracle] = {}


def _get_oracle(config, solver: str) -> DayOracle:
    cfg = make_config(config) if not isinstance(config, EnvConfig) else config
    key = (config_hash(cfg), solver.upper())
    if key not in _ORACLES:
        if len(_ORACLES) > 8:  # keep a few compiled programs, not all
            _ORACLES.pop(next(iter(_ORACLES)))
        _ORACLES[key] = DayOracle(cfg, solver=solver)
    return _ORACLES[key]


_MEMO: dict = {}
"""In-process memo of solved days (config hash, day, soc_init, solver) → result; bounded."""


def _remember(key, res) -> None:
    if len(_MEMO) >= 512:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = res


def _cache_path(cache_dir: str, h: str, day: int, soc_init) -> str:
    tag = "" if soc_init is None else "_soc" + hashlib.sha256(
        np.asarray(soc_init, float).tobytes()).hexdigest()[:8]
    return os.path.join(os.fspath(cache_dir), f"oracle_{h}_day{int(day):03d}{tag}.npz")


def solve_day(config: EnvConfig | str | None = None, day: int = 0, *, cache_dir: str | os.PathLike | None = None,
              solver: str = "CLARABEL", soc_init: Sequence[float] | None = None) -> OracleResult:
    """Solve one day with perfect foresight; see the module docs.

    Args:
        config: an :class:`EnvConfig` or preset name (default ``"paper"``); build one with
            ``make_config(...)`` for overrides (``env.config`` is the env's own).
        day: dataset day index (as in ``env.reset(options={"day": day})``).
        cache_dir: if given, the result is read from / written to
            ``<cache_dir>/oracle_<config_hash>_day<day>.npz`` (computed on demand). Within one process, solved
            days are also memoised in memory (the same object is returned again).
        solver: ``"CLARABEL"`` (default) or ``"ECOS"`` (the other is the fallback).
        soc_init: initial SoC per microgrid (default: the config's ``soc_init``).

    Returns:
        an :class:`OracleResult`: ``objective_eur`` (what it minimises = −team return), ``cost_eur``,
        ``dispatch`` (per-hour arrays), ``status``, ``solve_time_s``, ``relaxation_gap_pu``, …
    """
    cfg = make_config(config) if not isinstance(config, EnvConfig) else config
    h = config_hash(cfg)
    memo_key = (h, int(day), None if soc_init is None else tuple(np.asarray(soc_init, float).tolist()),
                solver.upper())
    path = None if cache_dir is None else _cache_path(cache_dir, h, day, soc_init)
    if memo_key in _MEMO:
        res = _MEMO[memo_key]
        if path is not None and not os.path.exists(path):
            _save_atomic(res, path)
        return res
    if path is not None:
        if os.path.exists(path):
            try:
                res = OracleResult.load(path)
                _remember(memo_key, res)
                return res
            except Exception:  # noqa: BLE001 - a broken cache file is recomputed
                pass
    res = _get_oracle(cfg, solver).solve(day, soc_init)
    _remember(memo_key, res)
    if path is not None:
        _save_atomic(res, path)
    return res


def _save_atomic(res: OracleResult, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[:-4] + f".tmp{os.getpid()}.npz"
    res.save(tmp)
    os.replace(tmp, path)


def solve_days(config: EnvConfig | str | None = None, days: Sequence[int] | None = None, *,
               split: str = "test", cache_dir: str | os.PathLike | None = None, solver: str = "CLARABEL",
               progress: bool = False) -> list[OracleResult]:
    """:func:`solve_day` for several days (default: every day of ``split``)."""
    cfg = make_config(config) if not isinstance(config, EnvConfig) else config
    if days is None:
        days = load_dataset(cfg.dataset).split_days(split).tolist()
    it = days
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(days, desc="oracle", unit="day")
        except ImportError:  # pragma: no cover
            pass
    return [solve_day(cfg, int(d), cache_dir=cache_dir, solver=solver) for d in it]


def actions_from_dispatch(env, dispatch: Mapping[str, np.ndarray] | OracleResult, hour: int) -> dict:
    """The env actions (``{agent: float32 array (4,)}``) that request a dispatch's set-points at ``hour``.

    ``dispatch`` is an :class:`OracleResult` or its ``dispatch`` dict: the per-hour (24, N) arrays ``p_mt_kw``,
    ``p_ess_kw`` (= P_dis − P_cha, positive discharges), ``p_grid_kw`` and ``q_grid_kvar``. The set-points go
    through :meth:`MultiMicrogridEnv.action_from_setpoints` (the inverse of the affine action map). Actions are
    float32, so the env sees the set-points to about 1e-7 of each range; set-points at a limit can land a hair
    outside [-1, 1] and are clipped by the env (harmless, counted in ``info["actions_clipped"]``).

    The env's ΔP/ΔQ, curtailment and shedding are not actions: the env's OPF recomputes them, and, given the same
    lower-layer set-points, finds the oracle's values (the day program splits into the env's per-hour OPFs).
    """
    d = dispatch.dispatch if isinstance(dispatch, OracleResult) else dispatch
    h = int(hour)
    return env.action_from_setpoints(d["p_mt_kw"][h], d["p_ess_kw"][h], d["p_grid_kw"][h], d["q_grid_kvar"][h])


@dataclass
class ReplayResult:
    """The env's own account of a replayed dispatch."""

    objective_eur: float
    """−Σ team reward (= Σ cost_total_eur + β Σ cons with α = 1)."""
    cost_eur: float
    """Σ of the env's ``cost_total_eur``."""
    infos: list
    """The per-step infos (``{agent: info}``), 24 of them."""
    soc_gap: float
    """max |SoC_env − SoC_oracle| over the day."""


def replay(result: OracleResult, env) -> ReplayResult:
    """Run the oracle's dispatch through an environment and return the env's own account of it.

    ``env`` is a :class:`MultiMicrogridEnv` with the oracle's config (or an :class:`EnvConfig` / preset name, from
    which a new env is built). The env is reset to ``result.day`` with the oracle's initial SoC.
    """
    if not hasattr(env, "step"):
        from .env import MultiMicrogridEnv

        env = MultiMicrogridEnv(env)
    if result.config_hash and config_hash(env.config) != result.config_hash:
        warnings.warn("replay: the env's config differs from the oracle's (config hash mismatch)", stacklevel=2)
    env.reset(options={"day": result.day, "soc": result.soc_init})
    infos_all, team, cost = [], 0.0, 0.0
    soc_gap = 0.0
    for h in range(HOURS_PER_DAY):
        _, _, _, _, infos = env.step(actions_from_dispatch(env, result, h))
        a0 = env.possible_agents[0]
        team += infos[a0]["team_reward"]
        cost += infos[a0]["cost_total_eur"]
        soc_gap = max(soc_gap, float(np.max(np.abs(env.soc - result.dispatch["soc"][h]))))
        infos_all.append(infos)
    return ReplayResult(objective_eur=-team, cost_eur=cost, infos=infos_all, soc_gap=soc_gap)


class OraclePolicy:
    """A "policy" that replays the oracle's dispatch for the env's current day (it peeks at the env: a benchmark,
    not a policy). The evaluation harness calls :meth:`bind_env` with its env before the first day.

    Args:
        cache_dir: passed to :func:`solve_day`.
        solver: passed to :func:`solve_day`.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, solver: str = "CLARABEL", env=None):
        self.cache_dir, self.solver = cache_dir, solver
        self.env = env
        self._result: OracleResult | None = None

    def bind_env(self, env) -> None:
        self.env = env

    def reset(self) -> None:
        self._result = None

    def result_for(self, day: int) -> OracleResult:
        if self._result is None or self._result.day != day:
            self._result = solve_day(self.env.config, day, cache_dir=self.cache_dir, solver=self.solver,
                                     soc_init=None if np.allclose(self.env.soc, self.env.fleet.soc_init)
                                     else self.env.soc)
        return self._result

    def __call__(self, observations: dict) -> dict:
        if self.env is None:
            raise RuntimeError("OraclePolicy needs the env: OraclePolicy(env=env) or policy.bind_env(env)")
        env = self.env
        if env.hour == 0:
            self._result = None
        res = self.result_for(env.day)
        return actions_from_dispatch(env, res, env.hour)
