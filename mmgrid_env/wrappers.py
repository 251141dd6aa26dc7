"""Wrappers around the multi-microgrid ParallelEnv.

:class:`DiscreteActions` turns every agent's continuous ``Box(-1, 1, (4,))`` action into a ``Discrete(k)`` choice
of (MT level, ESS level), for value-based learners (DQN and friends). The main-grid trade and the reactive
import are not chosen by the agent: they close the microgrid's own balance.

>>> from mmgrid_env import parallel_env, DiscreteActions
>>> env = DiscreteActions(parallel_env())
>>> obs, infos = env.reset(seed=0)
>>> env.action_space("mg_0")
Discrete(44)
>>> obs, rew, term, trunc, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from . import control

__all__ = ["DiscreteActions", "PAPER_ESS_LEVELS", "SafetyCosts", "CONSTRAINT_KEYS"]

PAPER_ESS_LEVELS = tuple(np.round(np.linspace(-1.0, 1.0, 11), 10).tolist())
"""The paper's ESS levels {-1, -0.8, …, 0.8, 1} as a fraction of rated power (+ discharge, − charge)."""


class DiscreteActions(ParallelEnv):
    """Discrete-action view of a multi-microgrid ParallelEnv (itself a valid PettingZoo ``ParallelEnv``).

    Each agent's action is an integer ``k ∈ {0, …, n_mt·n_ess − 1}`` decoded as
    ``mt_index, ess_index = divmod(k, n_ess)``:

    * **ESS** ``P_ESS = level · rated``: ``level`` from ``ess_levels`` (default: the paper's {-1, -0.8, …, 1});
      ``rated`` is the discharge limit for level > 0 and the charge limit for level < 0 (positive = discharge).
    * **MT** ``P_MT = P_MT,min + f · (P_MT,max − P_MT,min)`` with ``f`` from ``mt_levels`` (default 4 levels
      {0, 1/3, 2/3, 1}). ``mt_levels="merit_order"`` instead runs the MT where the observed price covers its
      marginal cost, ``P_MT = clip((c − b)/(2a), P_MT,min, P_MT,max)`` (cost a·P² + b·P + c₀, as the rule-based
      baseline does), and leaves the agent only the ESS choice: ``k = ess_index``.
    * **Main-grid trade** closes the remaining balance:
      ``P_grid = clip(P_load − P_PV − P_WT − P_MT − P_ESS, P_grid,min, P_grid,max)``, so the net injection p_i is 0
      unless the trade limit binds (then the upper layer settles the rest at balancing prices).
    * **Reactive import** ``Q_grid = clip(Q_load, Q_min, Q_max)`` with ``Q_load = P_load · tan φ``.

    PV, WT, load and SoC are read from the agent's **current observation** times the capacities (obs columns
    0–2 and 4, see the env docs), so decoding needs nothing but the observation: the same decoding can run inside a
    deployed policy (:meth:`continuous_actions`). The ESS may be clipped by the battery's physical SoC limits
    ([0, 1], hard in the env): with ``ess_feasible=True`` (default) the balance uses the power the battery *can*
    deliver or absorb at the observed SoC (the same formula as the env's ``ess_step``), so p_i = 0 also when the
    battery clips; with ``ess_feasible=False`` it uses the requested power (the env then reports the clipped kW in
    ``info["p_ess_clipped_kw"]`` and the balance is off by that amount). The ESS request itself is always passed on
    unchanged, so ``info["p_ess_requested_kw"]`` shows what the agent chose. Observations are float32, so the
    balance closes to about 1e-3 kW.

    ``ess_within_soc_limits=True`` shields the battery instead: the ESS request itself is clipped to what keeps
    SoC_{t+1} inside the *operational* limits [soc_min, soc_max] (the soft limits of the reward's SoC penalty),
    so a learner can never pay that penalty and need not learn the limits from it. A charge level at SoC_max (or
    a discharge level at SoC_min) then means "idle". Off by default (the agent's choice reaches the env as is).

    Actions are validated, never coerced: each must be an integer index in ``[0, n_actions)``: a Python ``int``,
    a NumPy integer, a size-1 integer array, or any object implementing ``__index__`` (e.g. a 0-d integer
    tensor). Anything else raises ``TypeError`` (floats, even integral ones like ``3.0``; strings; ``bool``, which
    is an ``int`` subclass but never meant as an index; arrays of another dtype or size) and an integer out of
    range raises ``ValueError``, with a message naming the agent. :meth:`step` also requires the ``actions`` dict
    to name exactly the live agents (``ValueError``); :meth:`setpoints` accepts any subset of them.

    Spaces are cached; ``observation_space``, ``state()``, ``state_space``, ``render``, ``close``, rewards and
    infos pass through. ``levels`` is the ``(k, 2)`` table of (MT fraction, ESS level) per action index.

    Args:
        env: a :class:`mmgrid_env.MultiMicrogridEnv` (or a wrapper of one exposing ``fleet`` and ``config``).
        ess_levels: ESS levels in [-1, 1] (fraction of rated power).
        mt_levels: MT levels in [0, 1] (fraction of the MT range), an int for that many evenly spaced levels, or
            ``"merit_order"`` (MT at its price-optimal set-point, not a choice of the agent).
        ess_feasible: close the balance with the SoC-feasible ESS power (True) or the requested one (False).
        ess_within_soc_limits: clip the ESS request to the operational SoC limits (a safety shield).
    """

    def __init__(self, env: ParallelEnv, ess_levels: Sequence[float] = PAPER_ESS_LEVELS,
                 mt_levels: Sequence[float] | int = 4, ess_feasible: bool = True,
                 ess_within_soc_limits: bool = False):
        super().__init__()
        self.env = env
        base = env.unwrapped
        if not hasattr(base, "fleet") or not hasattr(base, "config"):
            raise TypeError("DiscreteActions needs a mmgrid_env environment (with .fleet and .config)")
        self.mt_merit_order = isinstance(mt_levels, str)
        if self.mt_merit_order:
            if mt_levels != "merit_order":
                raise ValueError(f"mt_levels must be levels in [0, 1], an int or 'merit_order', got {mt_levels!r}")
            mt_levels = [np.nan]  # one MT "level": computed from the price at each step
        elif isinstance(mt_levels, (int, np.integer)):
            if mt_levels < 1:
                raise ValueError(f"mt_levels must be >= 1, got {mt_levels}")
            mt_levels = np.linspace(0.0, 1.0, int(mt_levels)) if mt_levels > 1 else np.zeros(1)
        self.ess_levels = np.asarray(ess_levels, float).reshape(-1)
        self.mt_levels = np.asarray(mt_levels, float).reshape(-1)
        if self.ess_levels.size == 0 or np.any(np.abs(self.ess_levels) > 1):
            raise ValueError(f"ess_levels must be non-empty and within [-1, 1], got {ess_levels!r}")
        if not self.mt_merit_order and (self.mt_levels.size == 0
                                        or np.any(~((self.mt_levels >= 0) & (self.mt_levels <= 1)))):
            raise ValueError(f"mt_levels must be non-empty and within [0, 1], got {mt_levels!r}")
        self.ess_feasible = bool(ess_feasible)
        self.ess_within_soc_limits = bool(ess_within_soc_limits)
        self.n_actions = self.mt_levels.size * self.ess_levels.size
        mt_f, ess_l = np.meshgrid(self.mt_levels, self.ess_levels, indexing="ij")
        self.levels = np.stack([mt_f.reshape(-1), ess_l.reshape(-1)], axis=1)
        self._fleet, self._dt = control.fleet_of(env), float(base.config.dt_h)
        self._tariff = control.tariff_of(base.config)
        self._index = {a: i for i, a in enumerate(env.possible_agents)}
        self._act_spaces = {a: spaces.Discrete(self.n_actions) for a in env.possible_agents}
        self._last_obs: dict[str, np.ndarray] = {}
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)

    # ------------------------------------------------------------------ pass-through
    @property
    def possible_agents(self) -> list[str]:
        return self.env.possible_agents

    @property
    def agents(self) -> list[str]:
        return self.env.agents

    @property
    def unwrapped(self) -> ParallelEnv:
        return self.env.unwrapped

    @property
    def state_space(self):
        return self.env.state_space

    @property
    def fleet(self):
        return self._fleet

    @property
    def config(self):
        return self.env.unwrapped.config

    def observation_space(self, agent: str) -> spaces.Space:
        return self.env.observation_space(agent)

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._act_spaces[agent]

    def state(self) -> np.ndarray:
        return self.env.state()

    def render(self):
        return self.env.render()

    def close(self):
        return self.env.close()

    # ------------------------------------------------------------------ decoding
    def _action_index(self, agent: str, action: Any) -> int:
        """``action`` as a Python int in ``[0, n_actions)``; ``TypeError``/``ValueError`` naming ``agent`` else."""
        expected = f"action of {agent} must be an integer in [0, {self.n_actions})"
        if isinstance(action, (bool, np.bool_)):
            raise TypeError(f"{expected}, got {_describe(action)}")
        if isinstance(action, np.ndarray):
            # np.ndarray.__index__ takes 0-d integer arrays only; a (1,)-shaped one is a common policy output
            if action.dtype.kind not in "iu" or action.size != 1:
                raise TypeError(f"{expected}, got {_describe(action)}")
            k = int(action.reshape(-1)[0])
        else:
            try:  # int, NumPy integers, 0-d integer tensors; not float or str (int() would truncate or parse them)
                k = operator.index(action)
            except TypeError:
                raise TypeError(f"{expected}, got {_describe(action)}") from None
        if not 0 <= k < self.n_actions:
            raise ValueError(f"{expected}, got {_describe(action)}")
        return k

    def setpoints(self, observations: dict[str, np.ndarray], actions: dict[str, Any]) -> dict[str, np.ndarray]:
        """Physical set-points ``[P_MT, P_ESS (requested), P_grid, Q_grid]`` (kW, kVar) per agent in ``actions``."""
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict {{agent: int}}, got {type(actions).__name__}")
        unknown = [a for a in actions if a not in self._index]
        if unknown:
            raise ValueError(f"actions name unknown agent(s) {unknown}; agents are {self.possible_agents}")
        keys = [self._action_index(a, k) for a, k in actions.items()]  # all checked before any decoding
        agents = list(actions)
        if not agents:
            return {}
        f = self._fleet.select([self._index[a] for a in agents])
        seen = control.observe(self.config, np.stack([np.asarray(observations[a], float) for a in agents]), f)
        mt_frac, ess_level = self.levels[keys, 0], self.levels[keys, 1]
        if self.mt_merit_order:
            p_mt = None  # after the battery: with a tariff the MT covers the deficit left by the battery
        else:
            p_mt = f.mt_min_kw + mt_frac * (f.mt_max_kw - f.mt_min_kw)
        p_ess = ess_level * np.where(ess_level > 0, f.ess_discharge_max_kw, f.ess_charge_max_kw)
        if self.ess_within_soc_limits:  # the shield: SoC_{t+1} inside the operational limits
            max_cha, max_dis = control.ess_operational_limits_kw(f, seen.soc, self._dt)
            p_ess = np.clip(p_ess, -max_cha, max_dis)
        p_ess_bal = p_ess
        if self.ess_feasible:  # the power the battery can deliver / absorb at its SoC (the env's rule)
            max_cha, max_dis = control.ess_limits_kw(f, seen.soc, self._dt)
            p_ess_bal = np.clip(p_ess, -max_cha, max_dis)
        if p_mt is None:
            p_mt = control.merit_order_mt_kw(f, seen.price_eur_per_kwh,
                                             seen.load_kw - seen.pv_kw - seen.wt_kw - p_ess_bal, self._tariff)
        p_grid = np.clip(control.balance_trade_kw(seen, p_mt, p_ess_bal), f.grid_p_min_kw, f.grid_p_max_kw)
        q_grid = np.clip(seen.q_load_kvar, f.grid_q_min_kvar, f.grid_q_max_kvar)
        sp = np.stack([p_mt, p_ess, p_grid, q_grid], axis=1)
        return {a: sp[j] for j, a in enumerate(agents)}

    def continuous_actions(self, observations: dict[str, np.ndarray], actions: dict[str, Any]
                           ) -> dict[str, np.ndarray]:
        """The env's continuous actions in [-1, 1]^4 for discrete ``actions`` at ``observations``."""
        sp = self.setpoints(observations, actions)
        if not sp:
            return {}
        f = self._fleet.select([self._index[a] for a in sp])
        act = control.setpoints_to_actions(f, np.stack(list(sp.values())))
        return {a: act[j] for j, a in enumerate(sp)}

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            for j, a in enumerate(self.possible_agents):
                self._act_spaces[a].seed(seed + j)
        obs, infos = self.env.reset(seed=seed, options=options)
        self._last_obs = dict(obs)
        return obs, infos

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict {{agent: int}}, got {type(actions).__name__}")
        if set(actions) != set(self.agents):
            missing = [a for a in self.agents if a not in actions]
            extra = [a for a in actions if a not in self.agents]
            raise ValueError(f"actions must name exactly the live agents {self.agents}; missing {missing}, "
                             f"unknown {extra}")
        cont = self.continuous_actions(self._last_obs, actions)
        obs, rew, term, trunc, infos = self.env.step(cont)
        self._last_obs = dict(obs)
        return obs, rew, term, trunc, infos


def _describe(value: Any) -> str:
    """A short one-line description of a rejected action: its value (when short) and its type."""
    if isinstance(value, np.ndarray) and value.size != 1:
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"{value.item()!r} (array of shape {value.shape} and dtype {value.dtype})"
    text = repr(value).replace("\n", " ")  # one line, whatever the object's repr
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


CONSTRAINT_KEYS = {
    "soc_violation": "cons(SoC_{t+1}): SoC outside its operational band [soc_min, soc_max] (fraction of capacity)",
    "shedding_kw": "load shed at this microgrid (kW for the hour = kWh)",
    "spill_kw": "surplus spilled at this microgrid (kWh)",
    "voltage_violation_pu": "largest squared-voltage limit violation on the network (p.u.², shared by all agents)",
    "relaxation_gap_pu": "the OPF's relaxation gap (p.u.; > 1e-6: the answer is not physical; shared)",
}
"""The constraint amounts every step's ``infos[agent]`` carries (all ≥ 0; 0 when the constraint holds)."""


class SafetyCosts(ParallelEnv):
    """Safety-Gymnasium-style constraint costs: each step's ``infos[agent]["cost"]`` for constrained RL.

    The env's rewards are unchanged; the cost is a separate signal built from the constraint amounts that the infos
    already carry (:data:`CONSTRAINT_KEYS`). ``mode="indicator"`` (default): 1.0 when any of the agent's amounts
    exceeds its tolerance (``tolerances``, default 1e-6 for each), else 0.0 — the Safety-Gymnasium convention, so
    a cost budget is a number of violating steps. ``mode="amount"``: Σ weight·amount (``weights``, default 1 for
    each), e.g. kWh shed and spilled. ``infos[agent]["costs"]`` holds the amounts by name either way.

    ```python
    >>> from mmgrid_env import parallel_env
    >>> from mmgrid_env.wrappers import SafetyCosts
    >>> env = SafetyCosts(parallel_env())
    >>> obs, infos = env.reset(seed=0)
    >>> obs, rew, term, trunc, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
    >>> infos["mg_0"]["cost"] in (0.0, 1.0)
    True

    ```
    """

    def __init__(self, env: ParallelEnv, mode: str = "indicator", weights: dict | None = None,
                 tolerances: dict | None = None):
        super().__init__()
        if mode not in ("indicator", "amount"):
            raise ValueError(f"mode must be 'indicator' or 'amount', got {mode!r}")
        for name, d in (("weights", weights), ("tolerances", tolerances)):
            unknown = sorted(set(d or {}) - set(CONSTRAINT_KEYS))
            if unknown:
                raise ValueError(f"{name}: unknown constraint(s) {unknown}; known: {sorted(CONSTRAINT_KEYS)}")
        self.env, self.mode = env, mode
        self.weights = {k: 1.0 for k in CONSTRAINT_KEYS} | dict(weights or {})
        self.tolerances = {k: 1e-6 for k in CONSTRAINT_KEYS} | dict(tolerances or {})
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)

    possible_agents = property(lambda self: self.env.possible_agents)
    agents = property(lambda self: self.env.agents)
    unwrapped = property(lambda self: self.env.unwrapped)
    state_space = property(lambda self: self.env.state_space)

    def observation_space(self, agent: str):
        return self.env.observation_space(agent)

    def action_space(self, agent: str):
        return self.env.action_space(agent)

    def state(self):
        return self.env.state()

    def render(self):
        return self.env.render()

    def close(self):
        return self.env.close()

    def _with_costs(self, infos: dict) -> dict:
        for info in infos.values():
            amounts = {k: max(float(info[k]), 0.0) for k in CONSTRAINT_KEYS}
            info["costs"] = amounts
            if self.mode == "indicator":
                info["cost"] = float(any(v > self.tolerances[k] for k, v in amounts.items()))
            else:
                info["cost"] = float(sum(self.weights[k] * v for k, v in amounts.items()))
        return infos

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return obs, self._with_costs(infos)

    def step(self, actions: dict):
        obs, rew, term, trunc, infos = self.env.step(actions)
        return obs, rew, term, trunc, self._with_costs(infos)
