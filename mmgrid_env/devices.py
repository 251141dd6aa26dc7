"""Lower layer: the devices of each microgrid (docs/model.md, "Lower layer").

Plain functions over a :class:`Fleet` (one array per parameter, one entry per microgrid), vectorised over
microgrids and days (the oracle and the baselines use them), and :func:`microgrid_step`, the same equations for
one microgrid in plain Python floats: the env's step runs it (for a handful of microgrids, scalar Python is
several times faster than NumPy calls on tiny arrays); a test checks that the two agree. Signs: P_ESS > 0
discharges (eq. 9), P_grid > 0 buys from the main grid, net injection p_i > 0 is a surplus.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple

import numpy as np

from .config import PROFILE_FIELDS, EnvConfig, MicrogridConfig

__all__ = ["Fleet", "fleet_from_config", "action_to_setpoints", "setpoints_to_action", "ess_step",
           "lower_layer_costs", "soc_penalty", "microgrid_params", "microgrid_step", "MicrogridStep", "STEP_FIELDS",
           "ACTION_NAMES", "CostTerm", "Quantities", "LOWER_COST_TERMS", "cost_term_names"]

ACTION_NAMES = ("p_mt", "p_ess", "p_grid", "q_grid")
"""Order of the four action components (eq. 25)."""


@dataclass(frozen=True)
class Fleet:
    """Every :class:`MicrogridConfig` field as an array over microgrids, plus derived quantities."""

    bus: np.ndarray
    pv_kwp: np.ndarray
    wt_kw: np.ndarray
    load_peak_kw: np.ndarray
    power_factor: np.ndarray
    mt_min_kw: np.ndarray
    mt_max_kw: np.ndarray
    mt_cost_a_eur_per_kw2h: np.ndarray
    mt_cost_b_eur_per_kwh: np.ndarray
    mt_cost_c_eur_per_h: np.ndarray
    ess_capacity_kwh: np.ndarray
    ess_charge_max_kw: np.ndarray
    ess_discharge_max_kw: np.ndarray
    ess_eta_charge: np.ndarray
    ess_eta_discharge: np.ndarray
    ess_cost_eur_per_kwh: np.ndarray
    soc_min: np.ndarray
    soc_max: np.ndarray
    soc_init: np.ndarray
    grid_p_min_kw: np.ndarray
    grid_p_max_kw: np.ndarray
    grid_q_min_kvar: np.ndarray
    grid_q_max_kvar: np.ndarray
    # derived: affine action map a ∈ [-1, 1]^4 → low + (a + 1)/2 · (high − low), shape (N, 4)
    action_low: np.ndarray
    action_high: np.ndarray
    tan_phi: np.ndarray

    @property
    def n(self) -> int:
        return len(self.bus)

    def select(self, index) -> "Fleet":
        """The fleet of the microgrids ``index`` (a list of indices), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Fleet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def fleet_from_config(cfg: EnvConfig) -> Fleet:
    mgs = cfg.microgrids
    arrays = {f.name: np.array([getattr(mg, f.name) for mg in mgs], dtype=float)
              for f in fields(MicrogridConfig) if f.name not in PROFILE_FIELDS}
    arrays["bus"] = arrays["bus"].astype(np.int64)
    low = np.stack([arrays["mt_min_kw"], -arrays["ess_charge_max_kw"], arrays["grid_p_min_kw"],
                    arrays["grid_q_min_kvar"]], axis=1)
    high = np.stack([arrays["mt_max_kw"], arrays["ess_discharge_max_kw"], arrays["grid_p_max_kw"],
                     arrays["grid_q_max_kvar"]], axis=1)
    tan_phi = np.array([math.tan(math.acos(mg.power_factor)) for mg in mgs])
    return Fleet(**arrays, action_low=low, action_high=high, tan_phi=tan_phi)


def action_to_setpoints(fleet: Fleet, action: np.ndarray) -> np.ndarray:
    """Map actions in [-1, 1], shape (N, 4), to set-points [P_MT kW, P_ESS kW, P_grid kW, Q_grid kVar]."""
    return fleet.action_low + (action + 1.0) * 0.5 * (fleet.action_high - fleet.action_low)


def setpoints_to_action(fleet: Fleet, setpoints: np.ndarray) -> np.ndarray:
    """Inverse of :func:`action_to_setpoints` (set-points outside the ranges map outside [-1, 1])."""
    span = fleet.action_high - fleet.action_low
    return 2.0 * (np.asarray(setpoints, float) - fleet.action_low) / np.where(span > 0, span, 1.0) - 1.0


def ess_step(fleet: Fleet, soc: np.ndarray, p_ess_request_kw: np.ndarray, dt_h: float):
    """Apply an ESS request; the physical SoC limits [0, 1] are hard.

    Returns ``(p_ess_kw, p_charge_kw, p_discharge_kw, soc_next)``: the request clipped to what the battery can
    deliver (discharge ≤ SoC·E·η_dis/Δt) or absorb (charge ≤ (1 − SoC)·E/(η_cha·Δt)), and the new SoC
    SoC' = SoC + (η_cha·P_cha − P_dis/η_dis)·Δt / E.
    """
    e = fleet.ess_capacity_kwh
    max_dis = np.minimum(fleet.ess_discharge_max_kw, soc * e * fleet.ess_eta_discharge / dt_h)
    max_cha = np.minimum(fleet.ess_charge_max_kw, (1.0 - soc) * e / (fleet.ess_eta_charge * dt_h))
    p_ess = np.minimum(np.maximum(p_ess_request_kw, -max_cha), max_dis)  # np.clip's wrapper is slow on tiny arrays
    p_dis = np.maximum(p_ess, 0.0)
    p_cha = np.maximum(-p_ess, 0.0)
    soc_next = soc + (fleet.ess_eta_charge * p_cha - p_dis / fleet.ess_eta_discharge) * dt_h / e
    return p_ess, p_cha, p_dis, np.minimum(np.maximum(soc_next, 0.0), 1.0)  # removes float round-off only


def lower_layer_costs(fleet: Fleet, price_eur_per_kwh: float, p_mt_kw, p_grid_kw, p_charge_kw, p_discharge_kw,
                      dt_h: float, export_discount: float = 0.0, grid_fee_eur_per_kwh: float = 0.0,
                      export_fee_eur_per_kwh: float = 0.0) -> tuple[np.ndarray, ...]:
    """€ per microgrid of each of :data:`LOWER_COST_TERMS` (F_MG, F_MT, F_ESS by default; eq. 19–21), vectorised.

    Buying costs c·P; selling earns (c − d·|c|)·|P| (= c(1 − d) for c ≥ 0), which keeps the cost convex.
    """
    c = float(price_eur_per_kwh)
    p_grid_kw = np.asarray(p_grid_kw, float)
    x = Quantities(np.asarray(p_mt_kw, float), p_grid_kw, np.maximum(-p_grid_kw, 0.0), np.asarray(p_charge_kw, float),
                   np.asarray(p_discharge_kw, float), c, export_discount * abs(c), np.maximum(p_grid_kw, 0.0),
                   grid_fee_eur_per_kwh, export_fee_eur_per_kwh)
    return tuple(term.eur_per_h(fleet, x, operator.mul) * dt_h for term in LOWER_COST_TERMS)


def soc_penalty(fleet: Fleet, soc: np.ndarray) -> np.ndarray:
    """cons(SoC) = max(0, SoC − SoC_max) + max(0, SoC_min − SoC) (eq. 6, soft)."""
    return np.maximum(soc - fleet.soc_max, 0.0) + np.maximum(fleet.soc_min - soc, 0.0)


# ---------------------------------------------------------------------- the lower layer's costs, written once
class Quantities(NamedTuple):
    """What a cost term may read of a microgrid's hour (floats, arrays or cvxpy expressions alike): kW and €/kWh.
    ``p_sell_kw`` = max(−P_grid, 0), ``p_buy_kw`` = max(P_grid, 0); ``export_markup_eur_per_kwh`` = c − (the
    export price) = d·|c| ≥ 0; the retail tariff's grid fee on imports and export fee on exports (€/kWh ≥ 0)."""

    p_mt_kw: Any
    p_grid_kw: Any
    p_sell_kw: Any
    p_charge_kw: Any
    p_discharge_kw: Any
    price_eur_per_kwh: Any
    export_markup_eur_per_kwh: Any
    p_buy_kw: Any = 0.0
    grid_fee_eur_per_kwh: Any = 0.0
    export_fee_eur_per_kwh: Any = 0.0


class CostTerm(NamedTuple):
    """One € term of the lower layer: ``eur_per_h(mg, x, mul)`` with ``mg`` a microgrid's ratings (the fields of
    :class:`~mmgrid_env.config.MicrogridConfig`, scalars or arrays), ``x`` its :class:`Quantities` and ``mul`` the
    elementwise product (``operator.mul`` for floats and arrays, ``cvxpy.multiply`` in the oracle). Written with
    ``+``, ``-``, ``mul`` and ``**2`` only, it works for the env's floats, NumPy arrays and the oracle's cvxpy
    expressions — and must be convex in ``x``. ``name`` is the ``infos[agent]`` key of its € per step."""

    name: str
    eur_per_h: Callable[[Any, Quantities, Callable], Any]


def grid_cost_eur_per_h(mg, x: Quantities, mul):
    """F_MG (eq. 19): buying costs c·P; selling earns c − d·|c| per kWh, i.e. c·P_grid + d·|c|·P_sell (convex); the
    retail tariff adds its grid fee per kWh bought and its export fee per kWh sold."""
    return mul(x.price_eur_per_kwh, x.p_grid_kw) + mul(x.export_markup_eur_per_kwh, x.p_sell_kw) \
        + mul(x.grid_fee_eur_per_kwh, x.p_buy_kw) + mul(x.export_fee_eur_per_kwh, x.p_sell_kw)


def mt_cost_eur_per_h(mg, x: Quantities, mul):
    """F_MT (eq. 20): a·P² + b·P + c, the constant c charged every hour (eq. 20 as written)."""
    return mul(mg.mt_cost_a_eur_per_kw2h, x.p_mt_kw ** 2) + mul(mg.mt_cost_b_eur_per_kwh, x.p_mt_kw) \
        + mg.mt_cost_c_eur_per_h


def ess_cost_eur_per_h(mg, x: Quantities, mul):
    """F_ESS (eq. 21): c_ESS·(η_cha·P_cha + P_dis/η_dis)."""
    return mul(mg.ess_cost_eur_per_kwh * mg.ess_eta_charge, x.p_charge_kw) \
        + mul(mg.ess_cost_eur_per_kwh / mg.ess_eta_discharge, x.p_discharge_kw)


LOWER_COST_TERMS: tuple[CostTerm, ...] = (
    CostTerm("cost_grid_eur", grid_cost_eur_per_h),
    CostTerm("cost_mt_eur", mt_cost_eur_per_h),
    CostTerm("cost_ess_eur", ess_cost_eur_per_h),
)
"""Every € cost of the lower layer, in one place: the env's step (:func:`microgrid_step`), its vectorised twin
(:func:`lower_layer_costs`) and the oracle's objective all evaluate these. A new term added here appears in the
reward, the oracle and ``infos`` (under its name)."""


def cost_term_names() -> tuple[str, ...]:
    """The ``infos`` keys of :data:`LOWER_COST_TERMS` (read at call time: an env built later sees additions)."""
    return tuple(t.name for t in LOWER_COST_TERMS)


# ---------------------------------------------------------------------- one microgrid, scalar
class MicrogridStep(NamedTuple):
    """What one microgrid's lower layer did in a step (:func:`microgrid_step`): kW, kVar, €; ``soc`` is SoC_{t+1}
    and ``soc_violation`` = cons(SoC_{t+1}). Each field is the ``infos[agent]`` key of the same name."""

    p_mt_kw: float
    p_ess_kw: float
    p_ess_requested_kw: float
    p_charge_kw: float
    p_discharge_kw: float
    p_grid_kw: float
    q_grid_kvar: float
    p_net_kw: float
    q_net_kvar: float
    soc: float
    soc_violation: float
    actions_clipped: float
    costs_eur: tuple
    """€ of each of :data:`LOWER_COST_TERMS`, in order (their names are the ``infos`` keys)."""

    @property
    def cost_lower_eur(self) -> float:
        """Σ of the lower layer's € terms (F_MG + F_MT + F_ESS by default)."""
        return sum(self.costs_eur)


STEP_FIELDS = MicrogridStep._fields[:-1]
"""Names of the physical values :func:`microgrid_step` returns (the fields of :class:`MicrogridStep` but the
costs, whose names are :func:`cost_term_names`)."""
_new_step = _new_quantities = tuple.__new__  # a NamedTuple's own __new__ checks its arguments: 2x slower
_mul = operator.mul


def microgrid_params(fleet: Fleet) -> list[tuple]:
    """Per microgrid, the parameters :func:`microgrid_step` reads: a tuple of floats, then the microgrid's
    ratings as one object (a :class:`Fleet` of that microgrid alone, for the cost terms) and the cost terms."""
    low, half = fleet.action_low, 0.5 * (fleet.action_high - fleet.action_low)
    cols = (low[:, 0], half[:, 0], low[:, 1], half[:, 1], low[:, 2], half[:, 2], low[:, 3], half[:, 3],
            fleet.ess_capacity_kwh, fleet.ess_eta_charge, fleet.ess_eta_discharge, fleet.ess_charge_max_kw,
            fleet.ess_discharge_max_kw, fleet.soc_min, fleet.soc_max)
    terms = tuple(t.eur_per_h for t in LOWER_COST_TERMS)
    return [tuple(float(c[i]) for c in cols) + (_ScalarRatings(fleet, i), terms) for i in range(fleet.n)]


class _ScalarRatings:
    """One microgrid's ratings as plain-float attributes (what a cost term reads in the env's step)."""

    def __init__(self, fleet: Fleet, i: int):
        for f in fields(fleet):
            if f.name not in ("action_low", "action_high"):
                setattr(self, f.name, float(getattr(fleet, f.name)[i]))


def microgrid_step(params: tuple, soc: float, action, p_pv_kw: float, p_wt_kw: float, p_load_kw: float,
                   q_load_kvar: float, price_eur_per_kwh: float, sell_price_eur_per_kwh: float,
                   dt_h: float, grid_fee_eur_per_kwh: float = 0.0, export_fee_eur_per_kwh: float = 0.0
                   ) -> MicrogridStep:
    """One microgrid's lower-layer step: action in [-1, 1]⁴ (clipped) → a :class:`MicrogridStep`.

    The same equations as :func:`action_to_setpoints`, :func:`ess_step`, :func:`lower_layer_costs` and
    :func:`soc_penalty` (eq. 4–10, 19–21, 25), for one microgrid in plain floats. ``params`` comes from
    :func:`microgrid_params`; ``sell_price_eur_per_kwh`` = c − d·|c| (export discount d).
    """
    (lo_mt, w_mt, lo_ess, w_ess, lo_g, w_g, lo_q, w_q, e_kwh, eta_c, eta_d, cha_max, dis_max, soc_min, soc_max,
     mg, terms) = params
    a_mt, a_ess, a_g, a_q = action
    n_clipped = 0
    if not -1.0 <= a_mt <= 1.0:
        a_mt, n_clipped = (1.0 if a_mt > 1.0 else -1.0), n_clipped + 1
    if not -1.0 <= a_ess <= 1.0:
        a_ess, n_clipped = (1.0 if a_ess > 1.0 else -1.0), n_clipped + 1
    if not -1.0 <= a_g <= 1.0:
        a_g, n_clipped = (1.0 if a_g > 1.0 else -1.0), n_clipped + 1
    if not -1.0 <= a_q <= 1.0:
        a_q, n_clipped = (1.0 if a_q > 1.0 else -1.0), n_clipped + 1
    p_mt = lo_mt + (a_mt + 1.0) * w_mt
    p_req = lo_ess + (a_ess + 1.0) * w_ess
    p_grid = lo_g + (a_g + 1.0) * w_g
    q_grid = lo_q + (a_q + 1.0) * w_q
    # ESS: what the battery can deliver/absorb at this SoC bounds the request (eq. 4–5)
    max_dis = min(dis_max, soc * e_kwh * eta_d / dt_h)
    max_cha = min(cha_max, (1.0 - soc) * e_kwh / (eta_c * dt_h))
    p_ess = min(max(p_req, -max_cha), max_dis)
    p_dis = p_ess if p_ess > 0.0 else 0.0
    p_cha = -p_ess if p_ess < 0.0 else 0.0
    soc_next = soc + (eta_c * p_cha - p_dis / eta_d) * dt_h / e_kwh
    soc_next = min(max(soc_next, 0.0), 1.0)  # removes float round-off only
    p_net = p_pv_kw + p_wt_kw + p_mt + p_ess + p_grid - p_load_kw  # eq. 9
    q_net = q_grid - q_load_kvar  # eq. 10
    x = _new_quantities(Quantities, (p_mt, p_grid, -p_grid if p_grid < 0.0 else 0.0, p_cha, p_dis, price_eur_per_kwh,
                                     price_eur_per_kwh - sell_price_eur_per_kwh, p_grid if p_grid > 0.0 else 0.0,
                                     grid_fee_eur_per_kwh, export_fee_eur_per_kwh))
    costs = tuple([term(mg, x, _mul) * dt_h for term in terms])
    cons = max(soc_next - soc_max, 0.0) + max(soc_min - soc_next, 0.0)
    return _new_step(MicrogridStep, (p_mt, p_ess, p_req, p_cha, p_dis, p_grid, q_grid, p_net, q_net, soc_next, cons,
                                     float(n_clipped), costs))
