"""AP-DQN for mmgrid-env: DQN + prioritized experience replay + multi-head attention (CleanRL-style, one file).

The algorithm of the AP-DQN paper (seed 002, §3), adapted to the multi-microgrid env:

* **Discrete actions** through :class:`mmgrid_env.DiscreteActions`: each agent picks (MT level, ESS level); the
  main-grid trade and the reactive import close the microgrid's own balance (see the wrapper's docs). Defaults:
  the paper's 11 ESS levels with the MT in merit order (``mt_levels="merit_order"``), and a SoC shield
  (``soc_shield=True``) that clips each ESS choice to the operational SoC limits.
* **Independent learners with shared parameters**: one Q-network for all microgrids; its input is the agent's own
  observation (eq. 23, plus the preset's extras: by default ``"paper_day_ahead"``, i.e. sin/cos of the hour and
  the next 11 hours of day-ahead prices), the hour of the day as a fraction t/24 (the policy counts its steps since ``reset()``, as the
  rule-based baseline does; switch off with ``time_feature=False``) and, after the attention block, a one-hot agent
  id. Each agent's transition is stored separately in one replay buffer.
* **Relational model** (``attention=True``): every state feature is embedded as a token (value · w_f + b_f), K heads
  of scaled dot-product self-attention run over the feature tokens (the weights sum to 1 over features), the heads
  are concatenated and fused by a linear layer, added back to the tokens (residual + LayerNorm) and mean-pooled
  before the Q head (an MLP). Without attention the Q-network is a plain MLP of the same width.
* **Double DQN** target ``r + γ·(1 − done)·Q_target(s', argmax_a Q_online(s', a))`` with a hard-updated target
  network, Huber loss, ε-greedy with a linear schedule. The end of a day is treated as terminal (energy left in the
  battery is worth nothing in a one-day episode; with the hour feature the state is Markov).
* **Prioritized replay** (``per=True``, Schaul et al. 2015, proportional): a sum-tree over p_i = (|δ_i| + ε)^α with
  α = 0.6, stratified sampling P(i) = p_i / Σp, importance weights w_i = (N·P(i))^(−β) divided by the batch's max,
  β annealed linearly 0.4 → 1 over training, new transitions at the maximum priority seen so far.

The four variants of the paper's Table 2 ablation: ``VARIANTS = {"dqn", "per_dqn", "att_dqn", "ap_dqn"}``
(``Args.variant`` sets ``per`` and ``attention``). Rewards default to ``reward_mode="individual"`` (each agent's own
cost and its share of the upper layer's cost, which is better suited to independent learners), scaled by
``reward_scale``, after adding the exogenous baseline c_t·(P_load − P_PV − P_WT) (``reward_baseline="net_load"``,
a control variate that no action changes); evaluation always reports the system's € cost.

Train with ``examples/train_ap_dqn.py``. Library use::

    from mmgrid_baselines.ap_dqn import Args, train, APDQNPolicy
    res = train(Args(variant="ap_dqn", total_steps=20_000))
    policy = APDQNPolicy(res.qnet, res.args)          # obs dict -> continuous action dict, has reset()
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgrid_env import DiscreteActions, parallel_env

from .common import CheckpointError, CsvLog, first_line, load_payload, save_payload

__all__ = ["Args", "VARIANTS", "SumTree", "PrioritizedReplayBuffer", "UniformReplayBuffer", "beta_schedule",
           "importance_weights", "FeatureAttention", "QNetwork", "train", "TrainResult", "APDQNPolicy",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "evaluate_days", "make_env"]

VARIANTS = {"dqn": (False, False), "per_dqn": (True, False), "att_dqn": (False, True), "ap_dqn": (True, True)}
"""variant → (prioritized replay, attention)."""


@dataclass
class Args:
    variant: str = "ap_dqn"
    """one of ``VARIANTS``: dqn, per_dqn, att_dqn, ap_dqn"""
    seed: int = 0
    total_steps: int = 60_000
    """env steps (one step = one hour for all agents); training also stops at ``time_budget_s``"""
    time_budget_s: float | None = None
    """a wall-clock cap in seconds, or ``None`` (default): no cap, so that a run's length, and so its result, does
    not depend on how loaded the machine is (same seed, same numbers)"""
    learning_rate: float = 5e-4
    gamma: float = 0.95
    batch_size: int = 128
    buffer_size: int = 2 ** 17
    learning_starts: int = 500
    """env steps of pure exploration before the first update"""
    train_frequency: int = 1
    """env steps between gradient updates"""
    target_update: int = 500
    """gradient updates between hard target-network updates"""
    eps_start: float = 1.0
    eps_end: float = 0.05
    exploration_fraction: float = 0.5
    """fraction of ``total_steps`` over which ε decays linearly"""
    per_alpha: float = 0.6
    per_beta0: float = 0.4
    per_eps: float = 1e-3
    hidden: int = 64
    d_model: int = 32
    n_heads: int = 4
    time_feature: bool = True
    reward_mode: str = "individual"
    reward_scale: float = 0.1
    mt_levels: int | str = "merit_order"
    """MT levels of :class:`mmgrid_env.DiscreteActions`: an int, or ``"merit_order"`` (MT at its price-optimal
    set-point; the agent then chooses only the ESS level)"""
    reward_baseline: str = "net_load"
    """``"net_load"`` (default): add c_t·(P_load − P_PV − P_WT)·Δt (the cost of buying the net load at the price; per agent
    in ``"individual"`` mode, the team's share in ``"shared"``) to each reward before learning. No action changes
    it, so the greedy policy of the true Q-function is unchanged; it removes the large exogenous part of every
    reward, which the Q-network would otherwise have to fit (a control variate, as in ``mmgrid_baselines.mappo``)."""
    soc_shield: bool = True
    """clip every ESS choice to the operational SoC limits (``DiscreteActions(ess_within_soc_limits=True)``): the
    SoC penalty can then never be paid"""
    max_grad_norm: float = 10.0
    config: str = "paper_day_ahead"
    """env preset (``"paper_day_ahead"``: the observation adds the next 11 hours of day-ahead prices and sin/cos of
    the hour; ``"paper_extras"``: the next hour's price only; ``"paper"``: eq. 23)"""
    env_overrides: dict = field(default_factory=dict)

    @property
    def per(self) -> bool:
        return VARIANTS[self.variant][0]

    @property
    def attention(self) -> bool:
        return VARIANTS[self.variant][1]


# ============================================================================ replay
class SumTree:
    """Binary sum-tree over ``capacity`` leaves (rounded up to a power of two); vectorised updates and queries.

    ``tree[1]`` is the total; leaf ``i`` sits at ``tree[capacity + i]``.
    """

    def __init__(self, capacity: int):
        self.capacity = 1 << max(0, int(math.ceil(math.log2(max(int(capacity), 1)))))
        self.tree = np.zeros(2 * self.capacity, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, idx) -> np.ndarray:
        return self.tree[self.capacity + np.asarray(idx)]

    def update(self, idx, values) -> None:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), idx.shape)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            raise ValueError("priorities must be finite and >= 0")
        node = idx + self.capacity
        self.tree[node] = values  # with duplicate indices the last one wins, as in a loop
        node = np.unique(node // 2)
        while node[0] >= 1:
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node // 2)

    def find(self, values) -> np.ndarray:
        """Leaf index i with prefix_sum(i) <= v < prefix_sum(i + 1), for each v in [0, total)."""
        v = np.asarray(values, dtype=np.float64).copy()
        node = np.ones(v.shape, dtype=np.int64)
        while node[0] < self.capacity if node.size else False:
            left = 2 * node
            lv = self.tree[left]
            go_right = v >= lv
            v = np.where(go_right, v - lv, v)
            node = np.where(go_right, left + 1, left)
        return node - self.capacity


def beta_schedule(step: int, total: int, beta0: float = 0.4) -> float:
    """β annealed linearly from ``beta0`` at step 0 to 1 at ``total`` (and 1 after)."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return beta0 + frac * (1.0 - beta0)


def importance_weights(probs: np.ndarray, n: int, beta: float) -> np.ndarray:
    """w_i = (n·P(i))^(−β), normalised by the max over the batch (so every weight is in (0, 1])."""
    w = (n * np.asarray(probs, dtype=np.float64)) ** (-beta)
    return w / w.max()


class _Storage:
    def __init__(self, capacity: int, obs_dim: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.agent = np.zeros(capacity, np.int64)
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.pos, self.size = 0, 0

    def _add(self, obs, agent, action, reward, next_obs, done) -> np.ndarray:
        n = len(action)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx], self.next_obs[idx] = obs, next_obs
        self.agent[idx], self.action[idx], self.reward[idx], self.done[idx] = agent, action, reward, done
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))
        return idx

    def batch(self, idx) -> dict[str, np.ndarray]:
        return {"obs": self.obs[idx], "agent": self.agent[idx], "action": self.action[idx],
                "reward": self.reward[idx], "next_obs": self.next_obs[idx], "done": self.done[idx]}

    def __len__(self) -> int:
        return self.size


class UniformReplayBuffer(_Storage):
    """Uniform replay with the same interface as :class:`PrioritizedReplayBuffer` (weights all 1)."""

    def add(self, obs, agent, action, reward, next_obs, done) -> None:
        self._add(obs, agent, action, reward, next_obs, done)

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 1.0):
        idx = rng.integers(0, self.size, batch_size)
        return idx, np.ones(batch_size), self.batch(idx)

    def update_priorities(self, idx, td_errors) -> None:
        pass


class PrioritizedReplayBuffer(_Storage):
    """Proportional prioritized replay: p_i = (|δ_i| + ε)^α in a :class:`SumTree`, new transitions at max priority."""

    def __init__(self, capacity: int, obs_dim: int, alpha: float = 0.6, eps: float = 1e-3):
        tree = SumTree(capacity)
        super().__init__(tree.capacity, obs_dim)
        self.tree, self.alpha, self.eps = tree, float(alpha), float(eps)
        self.max_priority = 1.0  # in |δ| + ε units, before the exponent α

    def add(self, obs, agent, action, reward, next_obs, done) -> None:
        idx = self._add(obs, agent, action, reward, next_obs, done)
        self.tree.update(idx, self.max_priority ** self.alpha)

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float):
        """Stratified sampling: one draw in each of ``batch_size`` equal slices of [0, total)."""
        total = self.tree.total
        bounds = np.arange(batch_size + 1) * (total / batch_size)
        v = rng.uniform(bounds[:-1], bounds[1:])
        idx = np.minimum(self.tree.find(np.minimum(v, np.nextafter(total, 0))), self.size - 1)
        probs = self.tree.get(idx) / total
        return idx, importance_weights(probs, self.size, beta), self.batch(idx)

    def update_priorities(self, idx, td_errors) -> None:
        p = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(idx, p ** self.alpha)


# ============================================================================ networks
class FeatureAttention(nn.Module):
    """Multi-head self-attention over the state's features, each feature a token; returns (pooled, weights).

    Input ``x`` (B, F) → tokens E (B, F, d) with E_f = x_f·w_f + b_f → per head h: softmax(Q_h K_hᵀ/√d_h) V_h
    → concatenate heads → fuse (linear d → d) → LayerNorm(E + fused) → mean over tokens (B, d).
    ``weights`` has shape (B, K, F, F) and sums to 1 over the last (feature) axis.
    """

    def __init__(self, n_features: int, d_model: int = 32, n_heads: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_features, self.d_model, self.n_heads = n_features, d_model, n_heads
        self.embed_w = nn.Parameter(torch.randn(n_features, d_model) / math.sqrt(d_model) * 2.0)
        self.embed_b = nn.Parameter(torch.randn(n_features, d_model) * 0.1)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.fuse = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f = x.shape
        tokens = x.unsqueeze(-1) * self.embed_w + self.embed_b  # (B, F, d)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        dh = self.d_model // self.n_heads
        split = lambda t: t.view(b, f, self.n_heads, dh).transpose(1, 2)  # noqa: E731  (B, K, F, dh)
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (B, K, F, F)
        heads = (weights @ v).transpose(1, 2).reshape(b, f, self.d_model)
        out = self.norm(tokens + self.fuse(heads))
        return out.mean(dim=1), weights


class QNetwork(nn.Module):
    """Shared Q-network: [attention over features →] concat one-hot agent id → MLP → Q(·, a) for every action."""

    def __init__(self, n_features: int, n_agents: int, n_actions: int, attention: bool = True, hidden: int = 64,
                 d_model: int = 32, n_heads: int = 4):
        super().__init__()
        self.n_features, self.n_agents, self.n_actions = n_features, n_agents, n_actions
        self.attention = FeatureAttention(n_features, d_model, n_heads) if attention else None
        n_in = (d_model if attention else n_features) + n_agents
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_actions))

    def forward(self, x: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        h = self.attention(x)[0] if self.attention is not None else x
        onehot = F.one_hot(agent.long(), self.n_agents).to(h.dtype)
        return self.mlp(torch.cat([h, onehot], dim=-1))


# ============================================================================ env helpers
def make_env(args: Args, **overrides):
    """The discrete-action env used for training (``reward_mode`` from ``args`` unless overridden)."""
    kw = {"reward_mode": args.reward_mode, **args.env_overrides, **overrides}
    return DiscreteActions(parallel_env(args.config, **kw), mt_levels=args.mt_levels,
                           ess_within_soc_limits=args.soc_shield)


def net_load_cost(infos: dict, agents: list[str], reward_mode: str, dt_h: float = 1.0) -> np.ndarray:
    """c_t·(P_load − P_PV − P_WT)·Δt € per agent (its own in "individual" mode, the team's share in "shared")."""
    own = np.array([infos[a]["price_eur_per_kwh"] * (infos[a]["p_load_kw"] - infos[a]["p_pv_kw"]
                                                      - infos[a]["p_wt_kw"]) * dt_h for a in agents])
    return own if reward_mode == "individual" else np.full(len(agents), own.sum() / len(agents))


def features(obs: np.ndarray, t: int, time_feature: bool) -> np.ndarray:
    """Network input for stacked observations (N, obs_dim): every observation column [+ hour fraction t/24].

    With the ``"paper"`` preset that is eq. 23's five features; presets with extras (``"paper_extras"``: Q_load,
    next hour's price, sin/cos of the hour) add theirs.
    """
    x = np.asarray(obs, np.float32)
    if time_feature:
        x = np.concatenate([x, np.full((x.shape[0], 1), t / 24.0, np.float32)], axis=1)
    return x


def n_features(args: Args, obs_dim: int = 5) -> int:
    return obs_dim + int(args.time_feature)


# ============================================================================ training
@dataclass
class TrainResult:
    qnet: QNetwork
    args: Args
    log: list[dict] = field(default_factory=list)
    env_steps: int = 0
    updates: int = 0
    wall_s: float = 0.0


def _epsilon(args: Args, step: int) -> float:
    frac = min(step / max(args.exploration_fraction * args.total_steps, 1), 1.0)
    return args.eps_start + frac * (args.eps_end - args.eps_start)


def train(args: Args, log_path: str | os.PathLike | None = None, progress: bool = True,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Train one variant; stops at ``args.total_steps`` env steps or ``args.time_budget_s`` seconds.

    Logs one row per episode (train days): episode, env_steps, updates, wall_s, epsilon, beta, cost_eur (the
    system's € cost of the day), return (sum of the agents' rewards), soc_violation_rate, loss, q_mean.
    """
    if args.variant not in VARIANTS:
        raise ValueError(f"unknown variant {args.variant!r}; known: {sorted(VARIANTS)}")
    if args.reward_baseline not in ("none", "net_load"):
        raise ValueError(f"reward_baseline must be 'none' or 'net_load', got {args.reward_baseline!r}")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    env = make_env(args)
    agents = env.possible_agents
    n_agents, n_act = len(agents), int(env.action_space(agents[0]).n)
    n_feat = n_features(args, int(env.observation_space(agents[0]).shape[0]))
    qnet = QNetwork(n_feat, n_agents, n_act, args.attention, args.hidden, args.d_model, args.n_heads)
    target = QNetwork(n_feat, n_agents, n_act, args.attention, args.hidden, args.d_model, args.n_heads)
    target.load_state_dict(qnet.state_dict())
    opt = torch.optim.Adam(qnet.parameters(), lr=args.learning_rate)
    buf = (PrioritizedReplayBuffer(args.buffer_size, n_feat, args.per_alpha, args.per_eps) if args.per
           else UniformReplayBuffer(args.buffer_size, n_feat))
    agent_ids = np.arange(n_agents)
    agent_ids_t = torch.as_tensor(agent_ids)
    dt_h = float(env.config.dt_h)

    if log_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log_csv = CsvLog(log_path)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.total_steps, desc=f"{args.variant} seed {args.seed}", unit="step", mininterval=1.0)

    t0 = time.perf_counter()
    step, updates, episode = 0, 0, 0
    log: list[dict] = []
    losses, qs = [], []
    obs, _ = env.reset(seed=args.seed, options={"split": "train"})
    t_hour, ep_cost, ep_ret, ep_viol = 0, 0.0, 0.0, 0.0
    budget_s = math.inf if args.time_budget_s is None else args.time_budget_s
    try:
        while step < args.total_steps and time.perf_counter() - t0 < budget_s:
            x = features(np.stack([obs[a] for a in agents]), t_hour, args.time_feature)
            eps = _epsilon(args, step)
            with torch.no_grad():
                greedy = qnet(torch.as_tensor(x), agent_ids_t).argmax(dim=1).numpy()
            explore = rng.random(n_agents) < eps
            act = np.where(explore, rng.integers(0, n_act, n_agents), greedy)
            next_obs, rew, term, trunc, infos = env.step({a: int(act[i]) for i, a in enumerate(agents)})
            t_hour += 1
            done = any(term.values()) or any(trunc.values())
            x_next = features(np.stack([next_obs[a] for a in agents]), t_hour, args.time_feature)
            r = np.array([rew[a] for a in agents])
            if args.reward_baseline == "net_load":
                r = r + net_load_cost(infos, agents, args.reward_mode, dt_h)
            r = (r * args.reward_scale).astype(np.float32)
            buf.add(x, agent_ids, act, r, x_next, np.full(n_agents, float(done), np.float32))
            ep_cost += infos[agents[0]]["cost_total_eur"]
            ep_ret += float(sum(rew.values()))
            ep_viol += float(sum(infos[a]["soc_violation"] > 1e-9 for a in agents))
            obs = next_obs
            step += 1

            if step >= args.learning_starts and step % args.train_frequency == 0 and len(buf) >= args.batch_size:
                beta = beta_schedule(step, args.total_steps, args.per_beta0)
                idx, w, b = buf.sample(args.batch_size, rng, beta)
                ob, nob = torch.as_tensor(b["obs"]), torch.as_tensor(b["next_obs"])
                ag = torch.as_tensor(b["agent"])
                with torch.no_grad():
                    a_star = qnet(nob, ag).argmax(dim=1, keepdim=True)
                    q_next = target(nob, ag).gather(1, a_star).squeeze(1)
                    y = torch.as_tensor(b["reward"]) + args.gamma * (1 - torch.as_tensor(b["done"])) * q_next
                q = qnet(ob, ag).gather(1, torch.as_tensor(b["action"]).unsqueeze(1)).squeeze(1)
                td = y - q
                loss = (torch.as_tensor(w, dtype=torch.float32) * F.smooth_l1_loss(q, y, reduction="none")).mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(qnet.parameters(), args.max_grad_norm)
                opt.step()
                buf.update_priorities(idx, td.detach().numpy())
                updates += 1
                losses.append(loss.item())
                qs.append(q.mean().item())
                if updates % args.target_update == 0:
                    target.load_state_dict(qnet.state_dict())

            if done:
                episode += 1
                row = {"episode": episode, "env_steps": step, "updates": updates,
                       "wall_s": round(time.perf_counter() - t0, 2), "epsilon": round(eps, 4),
                       "beta": round(beta_schedule(step, args.total_steps, args.per_beta0), 4) if args.per else "",
                       "cost_eur": round(ep_cost, 3), "return": round(ep_ret, 3),
                       "soc_violation_rate": round(ep_viol / (t_hour * n_agents), 4),
                       "loss": round(float(np.mean(losses)), 6) if losses else "",
                       "q_mean": round(float(np.mean(qs)), 4) if qs else ""}
                log.append(row)
                log_csv.write(row)
                if callback is not None:
                    callback(row)
                if bar is not None:
                    bar.set_postfix(cost=f"{ep_cost:.0f}", eps=f"{eps:.2f}", refresh=False)
                losses, qs = [], []
                obs, _ = env.reset(options={"split": "train"})
                t_hour, ep_cost, ep_ret, ep_viol = 0, 0.0, 0.0, 0.0
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        log_csv.close()
    return TrainResult(qnet, args, log, step, updates, time.perf_counter() - t0)


# ============================================================================ policy, checkpoints, evaluation
class APDQNPolicy:
    """Greedy policy of a trained Q-network: ``policy(obs_dict) -> continuous action dict``, with ``reset()``.

    Decodes the discrete choice with :meth:`DiscreteActions.continuous_actions` (balance closed by the trade), so it
    runs on the plain continuous env and in any evaluation harness. ``reset()`` restarts the hour counter.
    """

    def __init__(self, qnet: QNetwork, args: Args, env=None):
        self.qnet, self.args = qnet.eval(), args
        self.decoder = env if isinstance(env, DiscreteActions) else (
            DiscreteActions(env, mt_levels=args.mt_levels, ess_within_soc_limits=args.soc_shield)
            if env is not None else make_env(args))
        self.agents = list(self.decoder.possible_agents)
        self._t = 0

    def reset(self) -> None:
        self._t = 0

    def discrete(self, observations: dict) -> dict[str, int]:
        agents = [a for a in self.agents if a in observations]
        x = features(np.stack([observations[a] for a in agents]), self._t, self.args.time_feature)
        ids = torch.as_tensor([self.agents.index(a) for a in agents])
        with torch.no_grad():
            act = self.qnet(torch.as_tensor(x), ids).argmax(dim=1).numpy()
        self._t += 1
        return {a: int(act[i]) for i, a in enumerate(agents)}

    def __call__(self, observations: dict) -> dict[str, np.ndarray]:
        return self.decoder.continuous_actions(observations, self.discrete(observations))


def save_checkpoint(path: str | os.PathLike, result: TrainResult) -> None:
    """``torch.save`` of {state_dict, its SHA-256, config (Args as a dict), network sizes}; loads with
    ``weights_only=True``."""
    q = result.qnet
    save_payload({"state_dict": q.state_dict(), "config": dataclasses.asdict(result.args),
                   "n_features": int(q.n_features), "n_agents": int(q.n_agents), "n_actions": int(q.n_actions),
                   "env_steps": int(result.env_steps), "updates": int(result.updates)}, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[QNetwork, Args]:
    """``(qnet, args)`` of a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (naming the file) for a file that is not an intact AP-DQN checkpoint (see
    :func:`mmgrid_baselines.mappo.load_checkpoint`); checkpoints saved without the SHA-256 load unchecked by it.
    """
    name = os.fspath(path)
    ck = load_payload(path)
    try:
        args = Args(**ck["config"])
        q = QNetwork(ck["n_features"], ck["n_agents"], ck["n_actions"], args.attention, args.hidden, args.d_model,
                     args.n_heads)
        q.load_state_dict(ck["state_dict"])
    except KeyError as e:  # also an unknown variant (Args.attention)
        raise CheckpointError(f"{name}: not a valid AP-DQN checkpoint (missing or unknown {e})") from e
    except (TypeError, ValueError, RuntimeError) as e:  # unknown Args fields; weights that do not fit
        raise CheckpointError(f"{name}: not a valid AP-DQN checkpoint ({first_line(e)})") from e
    return q.eval(), args


def evaluate_days(policy, days, config: str = "paper", **env_overrides) -> dict[str, Any]:
    """Fallback evaluation (used when ``mmgrid_env.evaluate`` is unavailable): one episode per day, fresh SoC.

    Returns per-day € cost (``infos[...]["cost_total_eur"]`` summed over the 24 hours), the mean, and the
    SoC-violation rate = fraction of agent-hours with SoC_{t+1} outside [soc_min, soc_max].
    """
    env = parallel_env(config, **env_overrides)
    costs, viol, n = [], 0, 0
    for d in days:
        obs, _ = env.reset(options={"day": int(d)})
        if hasattr(policy, "reset"):
            policy.reset()
        c = 0.0
        while env.agents:
            obs, _, _, _, infos = env.step(policy(obs))
            c += infos[env.possible_agents[0]]["cost_total_eur"]
            viol += sum(infos[a]["soc_violation"] > 1e-9 for a in env.possible_agents)
            n += len(env.possible_agents)
        costs.append(c)
    return {"days": [int(d) for d in days], "cost_eur": costs, "mean_cost_eur": float(np.mean(costs)),
            "soc_violation_rate": viol / max(n, 1)}
