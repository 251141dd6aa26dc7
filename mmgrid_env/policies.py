"""Reference policies that need no training (and no torch): a rule-based dispatcher, the zero action, random.

Every policy here is a callable ``policy(observations) -> actions`` over the env's dicts ``{agent: np.ndarray}``,
with a ``reset()`` that the evaluation harness (:func:`mmgrid_env.evaluate`) calls at the start of each day. They
use only the env's public API: the config (to know each microgrid's capacities) and the observations
o_i = [P_PV/pv_kwp, P_WT/wt_kw, P_load/load_peak, c_t/price_scale, SoC] (eq. 23; extra columns, if the config
turns them on, are ignored). No policy here looks at future data.

* :class:`RuleBasedPolicy` — per microgrid and hour, in this order:

  1. **Reference price** ``ref`` = mean of the prices observed over the last 24 steps (the window runs across days;
     before any observation, the current price). Nothing from the future is used. With ``reference="day_ahead"``
     (for presets whose observation carries k hours of day-ahead prices, ``obs_price_forecast=k``) the 24-hour
     window reaches k hours ahead instead: the last 23 − k observed prices, the current one and the next k.
  2. **MT** runs where the price covers its marginal cost: P_MT = clip((c − b)/(2a), P_min, P_max) (the MT cost
     is a·P² + b·P + c₀; c₀ is paid every hour anyway). Off when c ≤ 0. With a retail tariff (grid fee g on
     imports, export fee e) a kWh of the MT is worth c + g while it replaces an import and c − e beyond: the MT
     covers the deficit the battery leaves, between the outputs where its marginal cost meets c − e and c + g
     (:func:`mmgrid_env.control.merit_order_mt_kw`).
  3. **Battery** (SoC kept inside the soft limits [soc_min, soc_max]: never charged above soc_max nor discharged
     below soc_min):

     * discharge at full power when c > ref·(1 + δ) (δ = ``band``, default 0.2) and c > 0;
     * charge at full power when c < ref·(1 − δ) or c ≤ 0;
     * otherwise charge from a local **surplus** (PV + WT + MT > load) when c ≤ ref;

     With a tariff the thresholds compare what a kWh is worth where it goes: export from the battery when
     c − e > ref·(1 + δ), charge from the grid when c + g < (ref + g)·(1 − δ) or c + g ≤ 0, store a surplus when
     c − e ≤ ref + g, and in the band above ref discharge to cover the microgrid's own deficit (it saves c + g).
     Without fees these are the rules above.
     * **end of day**: energy left in the battery after the last hour is worth nothing in a one-day episode, so in
       the last ``end_hours`` steps (default 4; the policy counts its steps since ``reset()``) it stops charging
       (unless c ≤ 0) and spreads what is left above soc_min evenly over the remaining hours when c > 0.

  4. **Trade** closes the remaining balance with the main grid: P_grid = load − PV − WT − P_MT − P_ESS, clipped to
     the trade limits (if the deficit exceeds the import limit, the MT is raised first). When c < 0 it buys what
     the microgrid can use instead, P_grid = load − P_MT − P_ESS (clipped), so that its own PV and WT output is the
     surplus the upper layer curtails (≈ 0 €/kWh): each kWh bought earns |c|, and nothing is bought that would have
     to be exported at a loss (only generation can be curtailed, env v1).
     (With a tariff: when c + g < 0.) Q_grid = Q_load (clipped), so the upper layer has no reactive imbalance to
     settle. ``schedule`` < 1 schedules only that share of the balance and leaves the rest to the upper layer,
     which nets it against the neighbours' on a feeder that shares; on the ``"feeder"`` preset the validation days
     chose 1 (all scheduled) over 0.5 and 0 (docs/results.md): a microgrid that cannot see its neighbours pays
     the imbalance mark-up on what is not matched.

* :class:`ZeroPolicy` — the all-zero action, i.e. the **middle of every range**: P_MT = (P_MT,min + P_MT,max)/2,
  P_ESS = (P_dis,max − P_ch,max)/2 (0 for a symmetric battery), P_grid = (P_min + P_max)/2 (0 for symmetric trade
  limits), Q_grid likewise. The upper layer then settles every imbalance at balancing prices.
* :class:`RandomPolicy` — uniform actions in [-1, 1]⁴ from its own seeded generator.

Example::

    from mmgrid_env import parallel_env, evaluate
    from mmgrid_env import RuleBasedPolicy
    env = parallel_env()
    res = evaluate(RuleBasedPolicy(env), split="test")
"""

from __future__ import annotations

from collections import deque

import numpy as np

from . import control
from .config import EnvConfig, make_config
from .data import HOURS_PER_DAY
from .devices import fleet_from_config

__all__ = ["RuleBasedPolicy", "ZeroPolicy", "RandomPolicy", "make_policy", "POLICIES", "rule_based_day_ahead"]


def _config_and_agents(env_or_config) -> tuple[EnvConfig, list[str]]:
    """Accept an env (its ``config`` and ``possible_agents``), an :class:`EnvConfig`, a preset name or None."""
    if hasattr(env_or_config, "possible_agents") and hasattr(env_or_config, "config"):
        return env_or_config.config, list(env_or_config.possible_agents)
    cfg = env_or_config if isinstance(env_or_config, EnvConfig) else make_config(env_or_config)
    return cfg, [f"mg_{i}" for i in range(len(cfg.microgrids))]


class RuleBasedPolicy:
    """The rule-based dispatcher described in the module docs.

    Args:
        env_or_config: the env (preferred), an :class:`EnvConfig` or a preset name: gives capacities and agents.
        band: relative price band δ around the reference price for charging/discharging. The defaults
            (δ = 0.2, 4 end hours) were picked by a coarse sweep (δ ∈ {0.1, 0.2, 0.3}, end hours ∈ {0, 4, 6}) on
            every 12th *training* day; the differences were within 1 %.
        end_hours: steps at the end of the day in which the battery is emptied down to soc_min.
        window: number of prices in the reference price.
        reference: ``"past"`` (default: the last ``window`` observed prices) or ``"day_ahead"`` (the window ends k
            hours ahead, with the k forecast prices of the observation; needs ``obs_price_forecast=k`` ≥ 1).
        schedule: the share of its balance a microgrid schedules with the main grid (P_grid); the rest is left
            to the upper layer, which nets it against the neighbours' when the config shares
            (``opf.sharing``) and settles the remainder at the balancing prices. Default: 1 without sharing,
            :data:`SHARING_SCHEDULE` with it.
    """

    def __init__(self, env_or_config=None, band: float = 0.2, end_hours: int = 4, window: int = 24,
                 reference: str = "past", schedule: float | None = None):
        cfg, agents = _config_and_agents(env_or_config)
        if schedule is None:
            schedule = SHARING_SCHEDULE if cfg.opf.sharing else 1.0
        if not 0.0 <= float(schedule) <= 1.0:
            raise ValueError(f"schedule must be in [0, 1] (the share of the balance traded with the main grid), "
                             f"got {schedule!r}")
        self.schedule = float(schedule)
        self.tariff = control.tariff_of(cfg)
        self._fees = self.tariff != (0.0, 0.0)
        if reference not in ("past", "day_ahead"):
            raise ValueError(f"reference must be 'past' or 'day_ahead', got {reference!r}")
        self.forecast_h = int(cfg.obs_price_forecast) if reference == "day_ahead" else 0
        if reference == "day_ahead" and not 1 <= self.forecast_h < window:
            raise ValueError("reference='day_ahead' needs a config with obs_price_forecast=k, 1 <= k < window "
                             f"(got k={int(cfg.obs_price_forecast)}, window={window}): e.g. preset 'paper_day_ahead'")
        self.config, self.agents = cfg, agents
        self.band, self.end_hours = float(band), int(end_hours)
        self.fleet = fleet_from_config(cfg)
        self.dt = float(cfg.dt_h)
        self.steps_per_day = HOURS_PER_DAY
        self._prices: deque = deque(maxlen=int(window) - self.forecast_h)
        self._t = 0

    def reset(self) -> None:
        """Start of a day: the hour counter restarts; the price window (past data) is kept."""
        self._t = 0

    def setpoints(self, obs: np.ndarray) -> np.ndarray:
        """Set-points [P_MT, P_ESS, P_grid, Q_grid] (kW, kVar), shape (N, 4), for stacked observations (N, ≥5)."""
        f = self.fleet
        g, e = self.tariff
        seen = control.observe(self.config, obs, f)
        c = float(seen.price_eur_per_kwh[0])
        soc = seen.soc
        if self.forecast_h:
            self._prices.append(c)
            ref = float(np.mean(np.concatenate([np.fromiter(self._prices, float), seen.price_ahead_eur_per_kwh[0]])))
        else:
            ref = float(np.mean(self._prices)) if self._prices else c
            self._prices.append(c)
        hours_left = max(self.steps_per_day - self._t, 1)
        self._t += 1
        # 2. MT at the output where its marginal cost b + 2aP meets the price (with a tariff: the import price
        #    c + g up to the microgrid's deficit, the export price c − e beyond it)
        deficit = seen.load_kw - seen.pv_kw - seen.wt_kw
        p_mt = control.merit_order_mt_kw(f, c, deficit, self.tariff)
        # 3. battery, inside the soft SoC limits
        ch_room, dis_room = control.ess_operational_limits_kw(f, soc, self.dt, margin=0.0)
        surplus = seen.pv_kw + seen.wt_kw + p_mt - seen.load_kw
        end = hours_left <= self.end_hours
        high = c - e > ref * (1 + self.band)  # worth exporting from the battery
        if c + g <= 0:
            p_ess = -ch_room
        elif end:
            p_ess = np.minimum(dis_room, (soc - f.soc_min).clip(0) * f.ess_capacity_kwh * f.ess_eta_discharge
                               / (self.dt * hours_left))
            if high:
                p_ess = dis_room
        elif high:
            p_ess = dis_room
        elif c + g < (ref + g) * (1 - self.band):
            p_ess = -ch_room
        elif c - e <= ref + g:  # a surplus is worth more stored than exported (without fees: c <= ref)
            p_ess = -np.minimum(np.clip(surplus, 0, None), ch_room)
            if self._fees and c > ref:  # with a tariff, stored energy also covers the own deficit (saves c + g)
                p_ess = np.where(surplus < 0, np.minimum(-surplus, dis_room), p_ess)
        else:
            p_ess = np.zeros_like(soc)
        if self._fees:  # the MT covers what the battery leaves of the deficit
            p_mt = control.merit_order_mt_kw(f, c, deficit - p_ess, self.tariff)
        # 4. trade closes the balance; the MT covers what the import limit cannot
        p_mt = control.mt_cover_kw(f, p_mt, control.balance_trade_kw(seen, p_mt, p_ess), lower=False)
        p_grid = np.clip(control.balance_trade_kw(seen, p_mt, p_ess), f.grid_p_min_kw, f.grid_p_max_kw)
        if c + g < 0:  # each kWh bought earns |c + g|: buy what the microgrid can use, its generation curtailed
            p_grid = np.clip(seen.load_kw - p_mt - p_ess, f.grid_p_min_kw, f.grid_p_max_kw)
        p_grid = self.schedule * p_grid  # the rest is left to the feeder: netted against neighbours if shared
        q_grid = np.clip(seen.q_load_kvar, f.grid_q_min_kvar, f.grid_q_max_kvar)
        return np.stack([p_mt, p_ess, p_grid, q_grid], axis=1)

    def __call__(self, observations: dict) -> dict:
        obs = np.stack([np.asarray(observations[a], float) for a in self.agents])
        act = control.setpoints_to_actions(self.fleet, self.setpoints(obs))
        return {a: act[i] for i, a in enumerate(self.agents) if a in observations}


class ZeroPolicy:
    """The all-zero action: the middle of every set-point range (see the module docs)."""

    def __init__(self, env_or_config=None):
        _, self.agents = _config_and_agents(env_or_config)

    def reset(self) -> None:
        pass

    def __call__(self, observations: dict) -> dict:
        return {a: np.zeros(4, np.float32) for a in observations}


SHARING_SCHEDULE = 1.0
"""The rule-based policy's default ``schedule`` on a feeder that shares (chosen on the validation days, see
``docs/results.md``)."""

RANDOM_DAY_SEED = 20_240_101
"""Bound to an env, :class:`RandomPolicy` plays day k with ``default_rng(RANDOM_DAY_SEED + seed + k)``."""


class RandomPolicy:
    """Uniform random actions in [-1, 1]⁴. Bound to an env (``bind_env``, as the evaluation harness does), each
    day is played from ``numpy.random.default_rng(RANDOM_DAY_SEED + seed + day)``, so a day's actions do not depend
    on which days ran before (this is the 0 of the normalised score, :mod:`mmgrid_env.protocol`); unbound, one
    stream from ``default_rng(seed)`` runs on across days."""

    def __init__(self, env_or_config=None, seed: int = 0):
        _, self.agents = _config_and_agents(env_or_config)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._env = None

    def bind_env(self, env) -> None:
        self._env = getattr(env, "unwrapped", env)

    def reset(self) -> None:
        if self._env is not None:
            self.rng = np.random.default_rng(RANDOM_DAY_SEED + self.seed + int(self._env.day))

    def __call__(self, observations: dict) -> dict:
        return {a: self.rng.uniform(-1.0, 1.0, 4).astype(np.float32) for a in observations}


def rule_based_day_ahead(env_or_config=None) -> RuleBasedPolicy:
    """The rule-based policy with ``reference="day_ahead"`` (the env's config needs ``obs_price_forecast`` ≥ 1,
    e.g. preset ``"paper_day_ahead"``): the yardstick for learners that observe the day-ahead prices."""
    return RuleBasedPolicy(env_or_config, reference="day_ahead")


POLICIES = {"rule_based": RuleBasedPolicy, "rule_based_day_ahead": rule_based_day_ahead, "zero": ZeroPolicy,
            "random": RandomPolicy}
"""Name → policy factory (each takes the env or config as first argument)."""


def make_policy(name: str, env_or_config=None, seed: int = 0):
    """A policy by name: ``"rule_based"``, ``"rule_based_day_ahead"``, ``"zero"`` or ``"random"`` (seeded)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    if name == "random":
        return RandomPolicy(env_or_config, seed=seed)
    return POLICIES[name](env_or_config)
