"""Lower layer: the devices of each microgrid, vectorised over microgrids (SPEC §3).

Plain functions over a :class:`Fleet` (one array per parameter, one entry per microgrid). Signs: P_ESS > 0
discharges (eq. 9), P_grid > 0 buys from the main grid, net injection p_i > 0 is a surplus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .config import EnvConfig, MicrogridConfig

__all__ = ["Fleet", "fleet_from_config", "action_to_setpoints", "setpoints_to_action", "ess_step",
           "lower_layer_costs", "soc_penalty", "ACTION_NAMES"]

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


def fleet_from_config(cfg: EnvConfig) -> Fleet:
    mgs = cfg.microgrids
    arrays = {f.name: np.array([getattr(mg, f.name) for mg in mgs], dtype=float)
              for f in fields(MicrogridConfig)}
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
                      dt_h: float, export_discount: float = 0.0):
    """(F_MG, F_MT, F_ESS) in € per microgrid (eq. 19–21).

    Buying costs c·P; selling earns (c − d·|c|)·|P| (= c(1 − d) for c ≥ 0), which keeps the cost convex.
    """
    c = float(price_eur_per_kwh)
    sell_price = c - export_discount * abs(c)
    f_mg = np.where(p_grid_kw >= 0, c * p_grid_kw, sell_price * p_grid_kw) * dt_h
    f_mt = (fleet.mt_cost_a_eur_per_kw2h * p_mt_kw ** 2 + fleet.mt_cost_b_eur_per_kwh * p_mt_kw
            + fleet.mt_cost_c_eur_per_h) * dt_h
    f_ess = fleet.ess_cost_eur_per_kwh * (fleet.ess_eta_charge * p_charge_kw
                                          + p_discharge_kw / fleet.ess_eta_discharge) * dt_h
    return f_mg, f_mt, f_ess


def soc_penalty(fleet: Fleet, soc: np.ndarray) -> np.ndarray:
    """cons(SoC) = max(0, SoC − SoC_max) + max(0, SoC_min − SoC) (eq. 6, soft)."""
    return np.maximum(soc - fleet.soc_max, 0.0) + np.maximum(fleet.soc_min - soc, 0.0)
