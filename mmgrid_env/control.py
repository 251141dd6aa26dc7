"""The public control layer: what a controller of the microgrids needs, written once.

Every function is vectorised over microgrids (the last axis has one entry per microgrid; leading axes broadcast) and
reads only a :class:`~mmgrid_env.devices.Fleet` (each microgrid's ratings) and observations, so it runs inside a
deployed policy as well as in training. The rule-based policy (:mod:`mmgrid_env.policies`), the discrete-action
wrapper (:class:`mmgrid_env.DiscreteActions`) and the learners' action maps are compositions of these.

>>> from mmgrid_env import parallel_env, control
>>> env = parallel_env()
>>> obs, _ = env.reset(seed=0)
>>> fleet = control.fleet_of(env)                        # ratings, from the env's config (any wrapper works)
>>> seen = control.observe(env, obs)                     # kW, €/kWh and SoC by name, from the observation
>>> p_mt = control.merit_order_mt_kw(fleet, seen.price_eur_per_kwh)
>>> max_cha, max_dis = control.ess_limits_kw(fleet, seen.soc)              # what the battery can do now
>>> p_grid = control.balance_trade_kw(seen, p_mt, 0.0)                     # the trade that closes the balance
>>> actions = control.to_actions(env, fleet, [p_mt, 0 * p_mt, p_grid, seen.q_load_kvar])

Set-points are [P_MT kW, P_ESS kW (+ discharge), P_grid kW (+ buy), Q_grid kVar (+ import)], as the env's actions
(eq. 25); :func:`setpoints_to_actions` maps them onto [-1, 1]⁴.

**Stages.** :class:`ActionChain` composes named stages that rewrite set-points given the observation; a learner's
action map is such a chain (stored in its checkpoints by name):

==================  ==========================================================================================
``merit_order_mt``  P_MT := :func:`merit_order_mt_kw` of the observed price and the tariff (the actor's P_MT is
                    ignored)
``soc_shield``      P_ESS clipped to :func:`ess_operational_limits_kw` (SoC_{t+1} stays in [soc_min, soc_max])
``mt_cover``        P_MT moved by what the trade limits cannot carry (:func:`mt_cover_kw`)
``balance``         P_grid := the balance (:func:`balance_trade_kw`, the battery at its SoC-feasible power)
                    + a_grid·ρ·(P_max − P_min)/2; Q_grid := Q_load + a_q·ρ·(Q_max − Q_min)/2 (ρ = residual)
==================  ==========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .config import EnvConfig, make_config
from .devices import Fleet, fleet_from_config

__all__ = ["fleet_of", "tariff_of", "observation_columns", "Observed", "observe", "merit_order_mt_kw", "ess_limits_kw",
           "ess_operational_limits_kw", "balance_trade_kw", "mt_cover_kw", "setpoints_to_actions", "to_actions",
           "ActionChain", "STAGES", "SOC_SHIELD_MARGIN"]

SOC_SHIELD_MARGIN = 1e-6
"""The SoC shield keeps this much SoC away from the operational limits: observations are float32, so the observed
SoC differs from the env's by up to ~3e-8."""


def _config(env_or_config: Any) -> EnvConfig:
    """The :class:`EnvConfig` of an env (any wrapper: ``.unwrapped.config``), a config or a preset name."""
    if isinstance(env_or_config, EnvConfig):
        return env_or_config
    if env_or_config is None or isinstance(env_or_config, str):
        return make_config(env_or_config)
    base = getattr(env_or_config, "unwrapped", env_or_config)
    cfg = getattr(base, "config", None)
    if not isinstance(cfg, EnvConfig):
        raise TypeError(f"expected a mmgrid_env environment, an EnvConfig or a preset name, got "
                        f"{type(env_or_config).__name__}")
    return cfg


def fleet_of(env_or_config: Any = None) -> Fleet:
    """Each microgrid's ratings (a :class:`~mmgrid_env.devices.Fleet`: one array per parameter) of an env (any
    wrapper), an :class:`EnvConfig` or a preset name (default ``"paper"``)."""
    return fleet_from_config(_config(env_or_config))


def observation_columns(env_or_config: Any = None) -> dict[str, int]:
    """Column of each observation entry by name: ``pv``, ``wt``, ``load`` (÷ capacity), ``price`` (÷ price
    scale), ``soc``; then, when the config turns them on, ``q_load`` (÷ load peak), ``price_ahead_1`` …
    ``price_ahead_k`` (÷ price scale), ``hour_sin``, ``hour_cos``. The env builds its observation in this order."""
    cfg = _config(env_or_config)
    names = ["pv", "wt", "load", "price", "soc"]
    if cfg.obs_q_load:
        names.append("q_load")
    names += [f"price_ahead_{k}" for k in range(1, int(cfg.obs_price_forecast) + 1)]
    if cfg.obs_hour:
        names += ["hour_sin", "hour_cos"]
    return {name: j for j, name in enumerate(names)}


@dataclass(frozen=True)
class Observed:
    """What an observation says, in physical units; arrays of shape (…, N)."""

    pv_kw: np.ndarray
    wt_kw: np.ndarray
    load_kw: np.ndarray
    q_load_kvar: np.ndarray
    """P_load·tan φ (the load's reactive power at its power factor)."""
    price_eur_per_kwh: np.ndarray
    soc: np.ndarray
    """State of charge, clipped to [0, 1] (float32 rounding)."""
    price_ahead_eur_per_kwh: np.ndarray
    """The day-ahead prices of the next k hours, shape (…, N, k) (k = 0 without a forecast in the observation)."""


def observe(env_or_config: Any, observations: Any, fleet: Fleet | None = None) -> Observed:
    """The physical values behind observations: a dict ``{agent: obs}`` (in agent order) or an array (…, N, dim).

    PV, WT and load are the observed per-unit values times each microgrid's capacity (0 for a microgrid without
    PV or WT), the price is the observed value times the price scale."""
    cfg = _config(env_or_config)
    f = fleet if fleet is not None else fleet_from_config(cfg)
    if isinstance(observations, dict):
        observations = np.stack([np.asarray(observations[f"mg_{i}"], np.float64) for i in range(f.n)])
    o = np.asarray(observations, np.float64)
    col = observation_columns(cfg)
    scale = float(cfg.price_scale_eur_per_kwh)
    pv = o[..., col["pv"]] * np.where(f.pv_kwp > 0, f.pv_kwp, 1.0) * (f.pv_kwp > 0)
    wt = o[..., col["wt"]] * np.where(f.wt_kw > 0, f.wt_kw, 1.0) * (f.wt_kw > 0)
    load = o[..., col["load"]] * f.load_peak_kw
    k = int(cfg.obs_price_forecast)
    first = col.get("price_ahead_1", 0)
    return Observed(pv_kw=pv, wt_kw=wt, load_kw=load, q_load_kvar=load * f.tan_phi,
                    price_eur_per_kwh=o[..., col["price"]] * scale, soc=np.clip(o[..., col["soc"]], 0.0, 1.0),
                    price_ahead_eur_per_kwh=o[..., first:first + k] * scale)


def _mt_at_price_kw(fleet: Fleet, c) -> np.ndarray:
    a, b = fleet.mt_cost_a_eur_per_kw2h, fleet.mt_cost_b_eur_per_kwh
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(a > 0, (c - b) / (2.0 * np.where(a > 0, a, 1.0)), np.where(c > b, np.inf, -np.inf))
    return np.clip(p, fleet.mt_min_kw, fleet.mt_max_kw)


def tariff_of(env_or_config: Any = None) -> tuple[float, float]:
    """(grid fee on imports, export fee) in €/kWh of an env (any wrapper), a config or a preset name."""
    opf = _config(env_or_config).opf
    return float(opf.grid_fee_eur_per_kwh), float(opf.export_fee_eur_per_kwh)


def merit_order_mt_kw(fleet: Fleet, price_eur_per_kwh, deficit_kw=None, tariff: tuple[float, float] = (0.0, 0.0)
                      ) -> np.ndarray:
    """The MT's set-point where the price meets its marginal cost b + 2a·P: clip((c − b)/(2a), P_min, P_max)
    (cost a·P² + b·P + c₀; c₀ is paid every hour anyway). With a = 0: P_max if c > b, else P_min.

    With a retail ``tariff`` = (grid fee g, export fee e) a kWh the MT makes is worth c + g while it replaces an
    import and c − e once it is exported, so the best output is the deficit it covers, clipped to
    [P(c − e), P(c + g)] (P(x): the output where the marginal cost meets x); ``deficit_kw`` is the microgrid's
    deficit without the MT (load − PV − WT − P_ESS; ``None``: no deficit known, P(c − e)). Without fees this is
    P(c) whatever the deficit."""
    c = np.asarray(price_eur_per_kwh, np.float64)
    g, e = float(tariff[0]), float(tariff[1])
    if g == 0.0 and e == 0.0:
        return _mt_at_price_kw(fleet, c)
    p_sell = _mt_at_price_kw(fleet, c - e)
    if deficit_kw is None:
        return p_sell
    return np.clip(np.asarray(deficit_kw, np.float64), p_sell, _mt_at_price_kw(fleet, c + g))


def ess_limits_kw(fleet: Fleet, soc, dt_h: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(max charge, max discharge) in kW that the battery can absorb / deliver this hour at ``soc``: its ratings,
    and the physical limits SoC ∈ [0, 1] — the env's own rule (``devices.ess_step``)."""
    soc = np.asarray(soc, np.float64)
    e = fleet.ess_capacity_kwh
    max_cha = np.minimum(fleet.ess_charge_max_kw, (1.0 - soc) * e / (fleet.ess_eta_charge * dt_h))
    max_dis = np.minimum(fleet.ess_discharge_max_kw, soc * e * fleet.ess_eta_discharge / dt_h)
    return max_cha, max_dis


def ess_operational_limits_kw(fleet: Fleet, soc, dt_h: float = 1.0, margin: float = SOC_SHIELD_MARGIN
                              ) -> tuple[np.ndarray, np.ndarray]:
    """(max charge, max discharge) in kW that keep SoC_{t+1} inside the operational limits [soc_min, soc_max]
    (the reward's soft limits), ``margin`` inside them, and within the ratings. Both ≥ 0."""
    soc = np.asarray(soc, np.float64)
    e = fleet.ess_capacity_kwh
    max_cha = np.maximum(fleet.soc_max - soc - margin, 0.0) * e / (fleet.ess_eta_charge * dt_h)
    max_dis = np.maximum(soc - fleet.soc_min - margin, 0.0) * e * fleet.ess_eta_discharge / dt_h
    return np.minimum(max_cha, fleet.ess_charge_max_kw), np.minimum(max_dis, fleet.ess_discharge_max_kw)


def balance_trade_kw(seen: Observed, p_mt_kw, p_ess_kw) -> np.ndarray:
    """The main-grid trade that closes the microgrid's own balance: P_load − P_PV − P_WT − P_MT − P_ESS (kW, + buy;
    not clipped to the trade limits). With it the microgrid's net injection p_i (eq. 9) is 0."""
    return seen.load_kw - seen.pv_kw - seen.wt_kw - p_mt_kw - p_ess_kw


def mt_cover_kw(fleet: Fleet, p_mt_kw, balance_kw, lower: bool = True) -> np.ndarray:
    """P_MT moved by what the trade limits cannot carry: up by a deficit above P_grid,max, and (``lower``) down by
    a surplus below P_grid,min, within the MT's range — so the network is not left to shed (or curtail) what the
    microgrid's own turbine could cover. ``balance_kw`` is :func:`balance_trade_kw` at ``p_mt_kw``."""
    up = np.maximum(balance_kw - fleet.grid_p_max_kw, 0.0)
    down = np.maximum(fleet.grid_p_min_kw - balance_kw, 0.0) if lower else 0.0
    return np.minimum(np.maximum(p_mt_kw + up - down, fleet.mt_min_kw), fleet.mt_max_kw)


def setpoints_to_actions(fleet: Fleet, setpoints) -> np.ndarray:
    """Set-points (…, N, 4) → actions in [-1, 1]⁴ (float32): the inverse of the env's affine map (eq. 25), clipped
    to the ranges."""
    low, high = fleet.action_low, fleet.action_high
    span = np.where(high > low, high - low, 1.0)
    return np.clip(2.0 * (np.asarray(setpoints, np.float64) - low) / span - 1.0, -1.0, 1.0).astype(np.float32)


def to_actions(env_or_agents: Any, fleet: Fleet, setpoints: Sequence) -> dict[str, np.ndarray]:
    """``{agent: action}`` for set-points given as a list [P_MT, P_ESS, P_grid, Q_grid] (each an array over
    microgrids, or one value for all) or an array (N, 4); agents from an env's ``possible_agents`` or a list."""
    agents = list(getattr(env_or_agents, "possible_agents", env_or_agents))
    if isinstance(setpoints, (list, tuple)):  # [P_MT, P_ESS, P_grid, Q_grid], each over microgrids (or a scalar)
        if len(setpoints) != 4:
            raise ValueError(f"set-points: need [P_MT, P_ESS, P_grid, Q_grid], got {len(setpoints)} entries")
        sp = np.stack([np.broadcast_to(np.asarray(x, np.float64), (fleet.n,)) for x in setpoints], axis=1)
    else:
        sp = np.asarray(setpoints, np.float64)
    if sp.shape != (fleet.n, 4):
        raise ValueError(f"set-points: expected shape ({fleet.n}, 4), got {sp.shape}")
    act = setpoints_to_actions(fleet, sp)
    return {a: act[i] for i, a in enumerate(agents)}


# ---------------------------------------------------------------------------------------------- stages
def _stage_merit_order_mt(chain, sp, seen, a):
    deficit = None  # without a tariff the deficit does not move the MT: not computed in the hot path
    if chain.tariff != (0.0, 0.0):
        deficit = seen.load_kw - seen.pv_kw - seen.wt_kw - _feasible_ess(chain, sp, seen)
    sp[..., 0] = merit_order_mt_kw(chain.fleet, seen.price_eur_per_kwh, deficit, chain.tariff)


def _stage_soc_shield(chain, sp, seen, a):
    max_cha, max_dis = ess_operational_limits_kw(chain.fleet, seen.soc, chain.dt_h)
    sp[..., 1] = np.clip(sp[..., 1], -max_cha, max_dis)


def _feasible_ess(chain, sp, seen):
    max_cha, max_dis = ess_limits_kw(chain.fleet, seen.soc, chain.dt_h)
    return np.clip(sp[..., 1], -max_cha, max_dis)


def _stage_mt_cover(chain, sp, seen, a):
    bal = balance_trade_kw(seen, sp[..., 0], _feasible_ess(chain, sp, seen))
    sp[..., 0] = mt_cover_kw(chain.fleet, sp[..., 0], bal)


def _stage_balance(chain, sp, seen, a):
    half = 0.5 * chain.residual * (chain.fleet.action_high - chain.fleet.action_low)
    sp[..., 2] = balance_trade_kw(seen, sp[..., 0], _feasible_ess(chain, sp, seen)) + a[..., 2] * half[:, 2]
    sp[..., 3] = seen.q_load_kvar + a[..., 3] * half[:, 3]


STAGES = {"merit_order_mt": _stage_merit_order_mt, "soc_shield": _stage_soc_shield, "mt_cover": _stage_mt_cover,
          "balance": _stage_balance}
"""Name → stage ``(chain, setpoints, observed, actor output) → None`` (rewrites the set-points in place)."""


class ActionChain:
    """Actor outputs (…, N, 4) in [-1, 1] → env actions: the env's affine map (eq. 25), then the named ``stages``
    in order (see the module docs), clipped to the ranges and mapped back onto [-1, 1]⁴.

    ``ActionChain(env, ())`` is the plain clip. Stages read only the observation and the ratings, so a policy can
    run the same chain when deployed. ``chain.spec`` (``{"stages": [...], "residual": ρ}``) rebuilds it:
    ``ActionChain(env, **spec)``.
    """

    def __init__(self, env_or_config: Any, stages: Sequence[str] = (), residual: float = 0.25):
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown action stage(s) {unknown}; known: {sorted(STAGES)}")
        if "mt_cover" in stages and "balance" not in stages:
            raise ValueError("stage 'mt_cover' needs 'balance' (it moves the MT by what the balanced trade cannot "
                             "carry)")
        self.config = _config(env_or_config)
        self.fleet = fleet_from_config(self.config)
        self.dt_h = float(self.config.dt_h)
        self.tariff = tariff_of(self.config)
        self.stages, self.residual = tuple(stages), float(residual)
        self._low, self._span = self.fleet.action_low, self.fleet.action_high - self.fleet.action_low

    @property
    def spec(self) -> dict:
        return {"stages": list(self.stages), "residual": self.residual}

    def setpoints(self, obs, actions) -> np.ndarray:
        """The set-points (…, N, 4) the chain makes of actor outputs at observations."""
        a = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
        sp = self._low + (a + 1.0) * 0.5 * self._span
        if self.stages:
            seen = observe(self.config, obs, self.fleet)
            for name in self.stages:
                STAGES[name](self, sp, seen, a)
        return sp

    def __call__(self, obs, actions) -> np.ndarray:
        if not self.stages:
            return np.clip(actions, -1.0, 1.0)
        return setpoints_to_actions(self.fleet, self.setpoints(obs, actions))

    def __repr__(self) -> str:
        return f"ActionChain(stages={list(self.stages)}, residual={self.residual})"
