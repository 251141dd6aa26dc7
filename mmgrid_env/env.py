"""The multi-microgrid PettingZoo ``ParallelEnv`` (``mmgrid_v1``)."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from .config import PROFILE_FIELDS, ConfigError, EnvConfig, make_config
from .data import HOURS_PER_DAY, Dataset, load_dataset
from .devices import (STEP_FIELDS, cost_term_names, fleet_from_config, microgrid_params, microgrid_step,
                      setpoints_to_action, soc_penalty)
from .network import build_network
from .opf import ConicOPF, MicrogridBalance, OPFResult

__all__ = ["MultiMicrogridEnv", "AGENT_INFO_KEYS", "SYSTEM_INFO_KEYS"]

EXOGENOUS_KEYS = ("p_pv_kw", "p_wt_kw", "p_load_kw", "q_load_kvar")
"""The hour's exogenous inputs of each microgrid (kW, kVar), as ``infos[agent]`` keys; the price is added too."""
BALANCE_FIELDS = MicrogridBalance._fields

def agent_info_keys() -> tuple[str, ...]:
    """The per-microgrid ``infos`` keys: the data, the lower layer's :class:`~mmgrid_env.devices.MicrogridStep`
    fields and one key per cost term (:data:`~mmgrid_env.devices.LOWER_COST_TERMS`), three derived values, and the
    upper layer's :class:`~mmgrid_env.opf.MicrogridBalance` fields."""
    return (*EXOGENOUS_KEYS, "price_eur_per_kwh",  # the data
            *STEP_FIELDS, *cost_term_names(),  # the lower layer (devices.MicrogridStep)
            "p_ess_clipped_kw", "cost_lower_eur", "reward_lower",  # derived
            *BALANCE_FIELDS)  # the upper layer at this microgrid (opf.MicrogridBalance)


AGENT_INFO_KEYS = agent_info_keys()
"""Per-microgrid keys of ``infos[agent]`` (kW, kVar, €, p.u.; ``soc_violation`` = cons(SoC_{t+1})): the names of
:class:`mmgrid_env.devices.MicrogridStep` and :class:`mmgrid_env.opf.MicrogridBalance`, one per lower-layer cost
term (``cost_grid_eur``, ``cost_mt_eur``, ``cost_ess_eur``), plus the data and three derived values
(``p_ess_clipped_kw`` = requested − delivered, ``cost_lower_eur`` = Σ of the cost terms,
``reward_lower`` = −(α·cost_lower + β·soc_violation)). An env records its own list as ``env.agent_info_keys``."""


class _StepRecord:
    """The last step's results; :attr:`MultiMicrogridEnv.last_step` builds its arrays on first access."""

    __slots__ = ("infos", "system", "opf", "rewards", "actions", "view")

    def __init__(self, infos, system, opf, rewards, actions):
        self.infos, self.system, self.opf, self.rewards, self.actions = infos, system, opf, rewards, actions
        self.view = None

SYSTEM_INFO_KEYS = (
    "hour", "day", "cost_upper_eur", "loss_kw", "loss_cost_eur", "voltage_penalty_eur", "cost_total_eur",
    "team_reward", "relaxation_gap_pu", "voltage_violation_pu", "opf_status", "opf_exactness_repair",
    "substation_p_kw", "background_load_kw", "v_min_pu", "v_max_pu",
)
"""System-wide keys, the same in every agent's info. ``cost_total_eur`` = Σ lower-layer € + upper-layer €;
``voltage_violation_pu``: the largest violation of the squared-voltage limits (p.u.², 0 when they hold);
``opf_status``: 0 optimal, 1 fallback solver, 2 safe dispatch (see :mod:`mmgrid_env.opf`);
``opf_exactness_repair``: 1 when the step was re-solved with losses priced above VOLL because its relaxation gap
exceeded 1e-6 p.u. (a surplus that only spill could absorb), −1 when that did not help, else 0;
``substation_p_kw``, ``background_load_kw`` (full feeder only, 0 otherwise): what the substation delivers into the
feeder and the feeder's own load this hour; ``v_min_pu``, ``v_max_pu``: the lowest and highest voltage magnitude
over the network's nodes (p.u.). Infos hold only
deterministic numbers (same seed and actions → same infos): solve times are in ``env.last_step["opf"]``."""


class MultiMicrogridEnv(ParallelEnv):
    """Networked microgrids trading with the main grid and with each other through an OPF.

    ## Description

    N microgrids (default 4) sit at buses of pandapower's IEEE 33-bus feeder ``case33bw``. Each has PV, a wind
    turbine (WT), a micro gas turbine (MT), a battery (ESS), a load, and a connection to the main grid, where it
    trades at the hourly real-time price. Each microgrid is one agent. Every hour the agents set their MT, ESS and
    main-grid trade (lower layer); then an **upper layer** solves a second-order-cone relaxed optimal power flow
    (SOCP OPF) on the network between microgrids. It routes one microgrid's surplus to another's deficit, and
    settles the rest with the main grid at balancing prices (a mark-up κ on the price), by explicit curtailment,
    or, as a last resort, by load shedding at the value of lost load. Rewards are the costs of both layers.
    The model follows the BMAPPO paper; its contract (equations, units, decisions) is ``docs/model.md``.

    ## Action Space

    Each agent: ``Box(-1, 1, (4,), float32)``, mapped affinely onto the physical ranges (eq. 25):

    | Num | Action   | Unit | Range (``-1`` … ``1``)              | Sign                       |
    |-----|----------|------|-------------------------------------|----------------------------|
    | 0   | P_MT     | kW   | ``mt_min_kw`` … ``mt_max_kw``       | generation                 |
    | 1   | P_ESS    | kW   | ``-ess_charge_max_kw`` … ``ess_discharge_max_kw`` | + discharge, − charge |
    | 2   | P_grid   | kW   | ``grid_p_min_kw`` … ``grid_p_max_kw`` | + buy, − sell             |
    | 3   | Q_grid   | kVar | ``grid_q_min_kvar`` … ``grid_q_max_kvar`` | + import              |

    Finite values outside [-1, 1] are clipped (counted in ``info["actions_clipped"]``); a wrong shape, NaN or inf
    raises ``ValueError``. The battery cannot deliver or absorb more than its SoC allows: the request is clipped
    and the clipped kW is reported in ``info["p_ess_clipped_kw"]``.

    ## Observation Space

    Each agent: ``Box(float32)`` with the observation of eq. 23, normalised to order one:

    | Num | Observation | Scale                                   | Range                      |
    |-----|-------------|-----------------------------------------|----------------------------|
    | 0   | P_PV        | ÷ ``pv_kwp`` (1 if 0)                    | [0, 1]                     |
    | 1   | P_WT        | ÷ ``wt_kw`` (1 if 0)                     | [0, 1]                     |
    | 2   | P_load      | ÷ ``load_peak_kw``                       | [0, 1]                     |
    | 3   | price c_t   | ÷ ``price_scale_eur_per_kwh`` (0.1 €/kWh) | the dataset's price range  |
    | 4   | SoC         | –                                        | [0, 1]                     |

    Optional extras, in this order (off in the ``"paper"`` preset): ``obs_q_load`` → Q_load ÷ ``load_peak_kw``;
    ``obs_price_forecast=k`` → the day-ahead prices of hours t+1 … t+k ÷ price scale (``True`` = the next hour;
    k ≤ 11 is what the day-ahead auction has published at every hour); ``obs_hour`` → sin, cos of 2π·hour/24.
    ``state()`` (eq. 24) concatenates every agent's observation without the hour features, then appends
    sin/cos of the hour once when ``obs_hour`` is on. Observations show the hour about to be dispatched.

    ## Rewards

    Per agent (eq. 26): r_i = −(α·(F_MG + F_MT + F_ESS) + β·cons(SoC_{t+1})) with F in € for the step. Upper-layer
    cost F_up = the OPF objective (€): network losses at w_t = max(c_t, 0.02 €/kWh), balancing trades, reactive
    power, curtailment, shedding and voltage penalties. Team reward r_t = −F_up + Σ_i r_i.
    ``reward_mode="shared"`` (default): every agent receives r_t / N. ``"individual"``: agent i receives r_i minus
    its own balancing/curtailment/shedding cost minus its share (by |p_i|) of the loss cost and voltage penalty.
    In both modes Σ_i rewards_i = r_t. ``infos`` carry every component in €.

    ## Starting State

    ``reset(seed=None, options=None)`` picks a day: ``options={"day": k}`` pins day index k (with a ``"split"`` too,
    k must belong to it: a test-day evaluation never silently runs a train day); otherwise a day is drawn with the
    env's RNG from ``options["split"]`` (``"train"`` default, ``"validation"``, ``"test"``, ``"all"`` or a stress
    split, see :data:`mmgrid_env.data.STRESS_SPLITS`). Test days are every 5th day (index % 5 == 4), validation
    days index % 10 == 1: 256 train / 37 validation / 73 test days in the bundled 2024 data. SoC starts at
    ``soc_init`` (``options={"soc": [...]}`` overrides it).

    ## Episode End

    One day = 24 hourly steps. After the 24th step every agent is **truncated** at once (never terminated) and
    ``agents`` becomes empty. The final observation shows the next calendar day's first hour (the same day's last
    hour on the last day of the data).

    ## Arguments

    ``parallel_env(config=None, render_mode=None, **overrides)``: ``config`` is an :class:`EnvConfig` or a preset
    name (``"paper"`` default, ``"paper_extras"``, ``"paper_day_ahead"``, ``"feeder"``: the full feeder with
    heterogeneous microgrids, tariff and sharing); ``overrides`` are :class:`EnvConfig` fields
    (``reward_mode``, ``alpha``, ``beta``, ``dataset``, ``obs_hour``, …), plus ``microgrid_buses=[...]`` and
    ``opf={...}`` (:class:`OPFConfig` fields such as ``impedance_aggregation``). ``env(...)`` returns the AEC
    version. After each step, ``env.last_step`` holds the step's arrays and the :class:`OPFResult`.
    ``render_mode``: ``"ansi"`` (a text table of the last step), ``"rgb_array"`` (the dispatch figure of the
    episode so far, an (H, W, 3) uint8 array), ``"human"`` (the same figure in a matplotlib window), or ``None``.

    ## Version History

    * v0: initial release (SOCP OPF on the reduced ``case33bw`` network, SMARD Luxembourg 2024 data).
    * v0, package 0.2.0: ``obs_price_forecast`` takes a number of hours (``True`` still means one); new preset
      ``"paper_day_ahead"``. Existing presets and their observations are unchanged.
    * v1, package 0.3.0: **only generation can be curtailed**: curtailment ≤ P_PV + P_WT of the microgrid; a
      surplus beyond it and the export headroom is **spilled** at VOLL (``info["spill_kw"]``). Before, at negative prices
      a microgrid could buy at its trade limit and have the purchase "curtailed" for free: a money pump. This
      changes the numbers of every preset (docs/results.md gives old → new). Also: every input checked (config
      fields, reset options, actions, data, OPF inputs; clear errors naming the field), observations owned by the
      caller, bit-identical replays, the env pickles; ``dt_h`` other than 1 is refused (it was accepted and
      silently wrong). New infos: ``spill_kw``, ``dlmp_eur_per_kwh`` (nodal price), ``voltage_violation_pu``,
      ``opf_exactness_repair``; splits ``"validation"`` and five stress splits. New options (off by default, so
      the presets keep their numbers): the full feeder (``opf.topology="feeder"``), the retail tariff
      (``opf.grid_fee_eur_per_kwh``, ``opf.export_fee_eur_per_kwh``), sharing between microgrids
      (``opf.sharing``), each microgrid's own load/PV/wind profiles (the bundled SimBench columns).
    * v1, package 0.4.0: new preset ``"feeder"`` (four heterogeneous microgrids at the ends of the full feeder,
      its own load, a cited grid fee, sharing); new infos ``v_min_pu``, ``v_max_pu``. The rule-based policy and the
      ``merit_order_mt`` action stage see the tariff (unchanged without one). The other presets' numbers are
      unchanged.
    """

    metadata = {"name": "mmgrid_v1", "render_modes": ["ansi", "rgb_array", "human"], "is_parallelizable": True,
                "render_fps": 1}

    def __init__(self, config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides: Any):
        self.config: EnvConfig = make_config(config, **overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, "
                             f"got {render_mode!r}")
        self.render_mode = render_mode
        cfg = self.config
        self.dataset: Dataset = load_dataset(cfg.dataset)
        self.fleet = fleet_from_config(cfg)
        self.network = build_network(self.fleet.bus.tolist(), aggregation=cfg.opf.impedance_aggregation,
                                     topology=cfg.opf.topology)
        f = self.fleet
        self.opf = ConicOPF(self.network, cfg.opf, f.grid_p_min_kw, f.grid_p_max_kw, f.grid_q_min_kvar,
                            f.grid_q_max_kvar, dt_h=cfg.dt_h)
        n = f.n
        self.possible_agents = [f"mg_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._agent_index = {a: i for i, a in enumerate(self.possible_agents)}
        # observation scales and bounds
        self._pv_scale = np.where(f.pv_kwp > 0, f.pv_kwp, 1.0)
        self._wt_scale = np.where(f.wt_kw > 0, f.wt_kw, 1.0)
        ds = self.dataset
        for i, mg in enumerate(cfg.microgrids):  # each microgrid's own profiles (columns of the dataset)
            for field_name in PROFILE_FIELDS:
                if getattr(mg, field_name) not in ds.columns:
                    raise ConfigError(f"microgrids[{i}].{field_name}={getattr(mg, field_name)!r} is not a column of "
                                      f"dataset {ds.name!r}; it has {list(ds.columns)}")

        def per_mg(field_name):  # (hours of the dataset, N)
            return np.stack([ds.column(getattr(mg, field_name)).reshape(-1) for mg in cfg.microgrids], axis=1)

        self._pv_flat, self._wind_flat, self._load_flat = per_mg("pv_profile"), per_mg("wind_profile"), \
            per_mg("load_profile")
        self._price_flat, self._background_flat = ds.price_eur_per_kwh.reshape(-1), ds.load_pu.reshape(-1)
        price = ds.price_eur_per_kwh / cfg.price_scale_eur_per_kwh
        p_lo, p_hi = float(price.min()) - 1e-3, float(price.max()) + 1e-3
        lows, highs = [0.0, 0.0, 0.0, p_lo, 0.0], [1.0, 1.0, 1.0, p_hi, 1.0]
        if cfg.obs_q_load:
            lows.append(0.0)
            highs.append(float(f.tan_phi.max()) + 1e-6)
        self._forecast_h = int(cfg.obs_price_forecast)
        lows += [p_lo] * self._forecast_h
        highs += [p_hi] * self._forecast_h
        self._core_dim = len(lows)
        if cfg.obs_hour:
            lows += [-1.0, -1.0]
            highs += [1.0, 1.0]
        low, high = np.array(lows, np.float32), np.array(highs, np.float32)
        self._obs_spaces = {a: spaces.Box(low, high, dtype=np.float32) for a in self.possible_agents}
        self._act_spaces = {a: spaces.Box(-1.0, 1.0, (4,), dtype=np.float32) for a in self.possible_agents}
        s_low = np.concatenate([low[: self._core_dim]] * n + ([low[-2:]] if cfg.obs_hour else []))
        s_high = np.concatenate([high[: self._core_dim]] * n + ([high[-2:]] if cfg.obs_hour else []))
        self.state_space = spaces.Box(s_low, s_high, dtype=np.float32)
        self._rng = np.random.default_rng()
        self._day = 0
        self._t = 0
        self._soc_list: list[float] = f.soc_init.tolist()  # SoC per microgrid, plain floats for the step
        self._last_step: _StepRecord | None = None  # see the last_step property
        self._history: list[dict] = []  # the episode's step infos, kept only when rendering figures
        self._obs = np.zeros((n, low.size), np.float32)
        self.agent_info_keys = agent_info_keys()  # with any cost term added to devices.LOWER_COST_TERMS
        self._cost_names = cost_term_names()
        self._agent_key_index = {k: j for j, k in enumerate(self.agent_info_keys)}  # render's columns
        self._agent_set = frozenset(self.possible_agents)
        self._mg_params = microgrid_params(f)
        self._tariff = (cfg.opf.grid_fee_eur_per_kwh, cfg.opf.export_fee_eur_per_kwh)

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Box:
        return self._act_spaces[agent]

    @property
    def num_agents(self) -> int:  # PettingZoo derives it from self.agents
        return len(self.agents)

    # ------------------------------------------------------------------ data
    def _load_day(self, day: int) -> None:
        """Exogenous series and observation rows of hours 0..24 of ``day``, computed once per episode.

        Hour 24 is the next calendar day's hour 0 (the final observation); indices clamp at the dataset's last hour.
        """
        cfg, f, last = self.config, self.fleet, self._price_flat.size - 1
        k = np.minimum(day * HOURS_PER_DAY + np.arange(HOURS_PER_DAY + 1), last)
        load_pu = self._load_flat[k]  # (25, N): each microgrid's own load profile
        self._day_pv_kw = self._pv_flat[k] * f.pv_kwp
        self._day_wt_kw = self._wind_flat[k] * f.wt_kw
        self._day_load_kw = load_pu * f.load_peak_kw
        self._day_q_load_kvar = self._day_load_kw * f.tan_phi
        self._day_price = self._price_flat[k]
        n, hours = f.n, HOURS_PER_DAY + 1
        price_obs = np.repeat((self._day_price / cfg.price_scale_eur_per_kwh)[:, None], n, axis=1)
        cols = [self._day_pv_kw / self._pv_scale, self._day_wt_kw / self._wt_scale, load_pu,
                price_obs, np.zeros((hours, n))]  # SoC (column 4) is filled in at each step
        if cfg.obs_q_load:
            cols.append(self._day_q_load_kvar / f.load_peak_kw)
        for ahead in range(1, self._forecast_h + 1):
            nxt = self._price_flat[np.minimum(k + ahead, last)] / cfg.price_scale_eur_per_kwh
            cols.append(np.repeat(nxt[:, None], n, axis=1))
        if cfg.obs_hour:
            angle = (np.arange(hours) % HOURS_PER_DAY) * 2.0 * math.pi / HOURS_PER_DAY
            cols += [np.repeat(np.sin(angle)[:, None], n, axis=1), np.repeat(np.cos(angle)[:, None], n, axis=1)]
        # the step reads the hour's numbers as Python floats: (pv, wt, load, q_load) per microgrid, and the price
        self._day_exo = np.stack([self._day_pv_kw, self._day_wt_kw, self._day_load_kw, self._day_q_load_kvar],
                                 axis=2).tolist()
        self._day_price_list = self._day_price.tolist()
        # full feeder: the factor on the feeder's own nominal load, hour by hour (the dataset's load profile)
        self._day_background = (self.config.opf.background_load_scale * self._background_flat[k]).tolist()
        space = self._obs_spaces[self.possible_agents[0]]
        # clip guards float32 rounding at the bounds only
        self._day_obs = np.clip(np.stack(cols, axis=2).astype(np.float32), space.low, space.high)

    def _observe(self, hour: int) -> np.ndarray:
        obs = self._day_obs[hour].copy()
        obs[:, 4] = self._soc_list
        return obs

    def state(self) -> np.ndarray:
        core = self._obs[:, : self._core_dim].reshape(-1)
        if self.config.obs_hour:
            core = np.concatenate([core, self._obs[0, -2:]])
        return core.astype(np.float32)

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            for i, a in enumerate(self.possible_agents):
                self._act_spaces[a].seed(seed + i)
                self._obs_spaces[a].seed(seed + i)
        options = dict(options or {})
        unknown = set(options) - {"day", "split", "soc"}
        if unknown:  # ignored, not raised: generic tools (PettingZoo's API test) pass options of their own
            warnings.warn(f"reset ignores unknown option(s) {sorted(unknown)}; known: 'day', 'split', 'soc'",
                          stacklevel=2)
        split = options.get("split")
        days = self.dataset.split_days("train" if split is None else split)
        if options.get("day") is not None:
            day = options["day"]
            if not isinstance(day, numbers.Integral) or isinstance(day, bool):
                raise ValueError(f"options['day'] must be an integer day index, got {day!r} "
                                 f"({type(day).__name__})")
            day = int(day)
            if not 0 <= day < self.dataset.n_days:
                raise ValueError(f"options['day']={day} is out of range: the dataset has days 0.."
                                 f"{self.dataset.n_days - 1}")
            if split is not None and day not in set(days.tolist()):
                raise ValueError(f"options['day']={day} is not a {split!r} day ({len(days)} days, e.g. "
                                 f"{days[:3].tolist()}); pass the split the day belongs to, or no split")
        else:
            day = int(self._rng.choice(days))
        soc = self.fleet.soc_init.copy()
        if options.get("soc") is not None:
            try:
                soc = np.array(options["soc"], dtype=float).reshape(-1)
            except (TypeError, ValueError):
                soc = np.full(0, np.nan)
            if soc.shape != (self.fleet.n,) or not np.all((soc >= 0) & (soc <= 1)):
                raise ValueError(f"options['soc'] needs {self.fleet.n} values in [0, 1], got {options['soc']!r}")
        self._day, self._t, self._soc_list = day, 0, soc.tolist()
        self.agents = list(self.possible_agents)
        self._load_day(day)
        self._obs = self._observe(0)
        self._last_step = None
        self._history: list[dict] = []
        own = self._obs.copy()  # the caller's arrays: writing into them must not reach state()
        observations = {a: own[i] for i, a in enumerate(self.agents)}
        system = dict.fromkeys(SYSTEM_INFO_KEYS, 0.0)
        system["hour"], system["day"] = 0.0, float(day)
        cons = soc_penalty(self.fleet, soc).tolist()
        infos = {}
        for i, a in enumerate(self.possible_agents):
            d = system.copy()
            d.update(dict.fromkeys(self.agent_info_keys, 0.0))
            d.update(zip(EXOGENOUS_KEYS, self._day_exo[0][i]))
            d.update(price_eur_per_kwh=float(self._day_price[0]), soc=float(soc[i]), soc_violation=cons[i], v_pu=1.0)
            infos[a] = d
        return observations, infos

    @property
    def last_step(self) -> dict[str, Any] | None:
        """The last step's record (``None`` before the first step of an episode), built on first access.

        ``rows``: (N, len(AGENT_INFO_KEYS)) array, the per-agent info values in ``keys`` order; ``system``: the
        system info dict; ``opf``: the :class:`OPFResult` (solve times, solver messages, flows); ``rewards``: (N,);
        ``actions``: (N, 4), as given (before clipping).
        """
        rec = self._last_step
        if rec is None:
            return None
        if rec.view is None:
            infos = [rec.infos[a] for a in self.possible_agents]
            keys = self.agent_info_keys
            rec.view = {"rows": np.array([[d[k] for k in keys] for d in infos]), "keys": keys,
                        "system": rec.system, "opf": rec.opf, "rewards": np.array(rec.rewards),
                        "actions": np.array(rec.actions)}
        return rec.view

    def _validate_actions(self, actions: dict) -> list[list[float]]:
        """The actions as N lists of 4 floats, in agent order (unclipped); clear errors for a user's bug."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        if not isinstance(actions, dict):
            raise TypeError(f"actions must be a dict {{agent: array of shape (4,)}}, got {type(actions).__name__}")
        if actions.keys() != self._agent_set:  # every agent is live until the episode ends
            missing = [a for a in self.agents if a not in actions]
            extra = [a for a in actions if a not in self._agent_index or a not in self.agents]
            raise ValueError(f"actions must name exactly the live agents {self.agents}; missing {missing}, "
                             f"unknown {extra}")
        out = []
        for a in self.possible_agents:
            v = actions[a]
            if type(v) is np.ndarray and v.shape == (4,) and v.dtype.kind in "fiu":
                out.append(v.tolist())
                continue
            kind = np.asarray(v).dtype.kind if not isinstance(v, (str, bytes)) else "U"
            if kind not in "fiub":  # strings, objects, complex: not a number, whatever the shape
                raise ValueError(f"action of {a} must be 4 real numbers, got {v!r} (dtype kind {kind!r})")
            arr = np.asarray(v, dtype=np.float64)
            if arr.shape != (4,):
                shapes = {b: np.shape(actions[b]) for b in self.possible_agents}
                raise ValueError(f"each action must have shape (4,); got {shapes}")
            out.append(arr.tolist())
        if not math.isfinite(sum(map(sum, out))):  # one check for the common case; exact search only on failure
            bad = [a for a, v in zip(self.possible_agents, out) if not all(map(math.isfinite, v))]
            if bad:
                raise ValueError(f"actions of {bad} contain NaN or inf")
        return out

    def step(self, actions: dict):
        act = self._validate_actions(actions)
        cfg, dt, n = self.config, self.config.dt_h, self.fleet.n
        day, hour = self._day, self._t
        price = self._day_price_list[hour]
        sell_price = price - cfg.export_discount * abs(price)
        exo = self._day_exo[hour]
        # Lower layer, one microgrid at a time in plain floats (devices.microgrid_step)
        fee_in, fee_out = self._tariff
        lower = [microgrid_step(prm, soc, a, pv, wt, load, q_load, price, sell_price, dt, fee_in, fee_out)
                 for prm, soc, a, (pv, wt, load, q_load) in zip(self._mg_params, self._soc_list, act, exo)]
        p_net = [r.p_net_kw for r in lower]
        opf: OPFResult = self.opf.solve(p_net, [r.q_net_kvar for r in lower], price, [r.p_grid_kw for r in lower],
                                        [r.q_grid_kvar for r in lower], [ex[0] + ex[1] for ex in exo],
                                        self._day_background[hour])
        alpha, beta = cfg.alpha, cfg.beta
        cost_lower = [r.cost_lower_eur for r in lower]
        r_lower = [-(alpha * c + beta * r.soc_violation) for c, r in zip(cost_lower, lower)]
        cost_upper = opf.objective_eur
        team = math.fsum(r_lower) - cost_upper
        balance = opf.mg_lists
        if cfg.reward_mode == "shared":
            rew = [team / n] * n
        else:
            shared_cost = opf.loss_cost_eur + opf.voltage_penalty_eur
            weight = [abs(p) for p in p_net]
            total = sum(weight)
            share = [w / total for w in weight] if total > 0 else [1.0 / n] * n
            rew = [r - c - shared_cost * sh for r, c, sh in zip(r_lower, balance.cost_balancing_eur, share)]
        self._soc_list = [r.soc for r in lower]
        self._t += 1
        done = self._t >= HOURS_PER_DAY
        self._obs = self._observe(self._t)
        system = {
            "hour": float(hour), "day": float(day), "cost_upper_eur": cost_upper, "loss_kw": opf.losses_kw,
            "loss_cost_eur": opf.loss_cost_eur, "voltage_penalty_eur": opf.voltage_penalty_eur,
            "cost_total_eur": math.fsum(cost_lower) + cost_upper, "team_reward": team,
            "relaxation_gap_pu": opf.relaxation_gap_pu, "voltage_violation_pu": opf.voltage_violation_pu,
            "opf_status": float(opf.status_code),
            "opf_exactness_repair": float(opf.exactness_repair),
            "substation_p_kw": opf.substation_p_kw, "background_load_kw": opf.background_p_kw,
            "v_min_pu": opf.v_min_pu, "v_max_pu": opf.v_max_pu,
        }
        agents = self.possible_agents
        own = self._obs.copy()  # the caller's arrays: writing into them must not reach state()
        observations = {a: own[i] for i, a in enumerate(agents)}
        rewards = dict(zip(agents, rew))
        terminations = dict.fromkeys(agents, False)
        truncations = dict.fromkeys(agents, done)
        # infos by name: the exogenous inputs, the lower layer's MicrogridStep, the OPF's MicrogridBalance
        infos = {}
        for a, ex, rec, c_low, r_low, bal in zip(agents, exo, lower, cost_lower, r_lower, zip(*balance)):
            d = system.copy()  # copy + update is ~2x faster than building a 40-key dict from scratch
            d.update(zip(EXOGENOUS_KEYS, ex))
            d["price_eur_per_kwh"] = price
            d.update(zip(STEP_FIELDS, rec))
            d.update(zip(self._cost_names, rec.costs_eur))
            d["p_ess_clipped_kw"] = rec.p_ess_requested_kw - rec.p_ess_kw
            d["cost_lower_eur"] = c_low
            d["reward_lower"] = r_low
            d.update(zip(BALANCE_FIELDS, bal))
            infos[a] = d
        self._last_step = _StepRecord(infos, system, opf, rew, act)
        if self.render_mode in ("rgb_array", "human"):
            self._history.append(infos)
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    # ------------------------------------------------------------------ helpers
    def action_from_setpoints(self, p_mt_kw, p_ess_kw, p_grid_kw, q_grid_kvar) -> dict[str, np.ndarray]:
        """Actions that request the given physical set-points (arrays over microgrids, kW/kVar)."""
        setp = np.stack([np.broadcast_to(np.asarray(x, float), (self.fleet.n,))
                         for x in (p_mt_kw, p_ess_kw, p_grid_kw, q_grid_kvar)], axis=1)
        act = setpoints_to_action(self.fleet, setp)
        return {a: act[i].astype(np.float32) for i, a in enumerate(self.possible_agents)}

    @property
    def day(self) -> int:
        """Index of the current day in the dataset."""
        return self._day

    @property
    def hour(self) -> int:
        """The hour the next step dispatches (0–23; 24 after the episode)."""
        return self._t

    @property
    def soc(self) -> np.ndarray:
        return np.array(self._soc_list)

    def render(self, *args, **kwargs):
        """Render according to ``render_mode`` (extra arguments, as some wrappers pass, are ignored).

        ``"ansi"``: a text table of the last step. ``"rgb_array"``: the dispatch figure of the episode so far as an
        (H, W, 3) uint8 array. ``"human"``: the same figure in a matplotlib window. ``None``: nothing.
        """
        if self.render_mode is None:
            return None
        if self.render_mode in ("rgb_array", "human"):
            from .render import render_rgb_array

            frame = render_rgb_array(self._history, agents=self.possible_agents)
            if self.render_mode == "rgb_array":
                return frame
            import matplotlib.pyplot as plt

            if getattr(self, "_figure", None) is None or not plt.fignum_exists(self._figure.number):
                self._figure = plt.figure(self.metadata["name"])
            self._figure.clf()
            self._figure.figimage(frame)
            plt.pause(1.0 / self.metadata["render_fps"])
            return None
        if self.last_step is None:
            return f"{self.metadata['name']} day {self._day} hour {self._t}: no step yet"
        rows, sysd = self.last_step["rows"], self.last_step["system"]
        k = self._agent_key_index
        cols = ("p_pv_kw", "p_wt_kw", "p_load_kw", "p_mt_kw", "p_ess_kw", "p_grid_kw", "p_net_kw", "delta_p_kw",
                "soc")
        lines = [f"day {int(sysd['day'])} hour {int(sysd['hour'])}  price {rows[0, k['price_eur_per_kwh']]:.4f} "
                 f"€/kWh  step cost {sysd['cost_total_eur']:.2f} €  losses {sysd['loss_kw']:.3f} kW",
                 "agent " + " ".join(f"{c:>11}" for c in cols)]
        for i, a in enumerate(self.possible_agents):
            lines.append(f"{a:<5} " + " ".join(f"{rows[i, k[c]]:>11.2f}" for c in cols))
        return "\n".join(lines)

    def close(self):
        if getattr(self, "_figure", None) is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
