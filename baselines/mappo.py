"""MAPPO for mmgrid-env: the reference lower-layer learner of the BMAPPO paper, in one readable file.

Centralised training, decentralised execution (CTDE, paper §III.B):

* one **actor** per microgrid, all sharing parameters, sees only its own observation o_i (eq. 23, plus the
  preset's extras) and a one-hot agent id (the microgrids differ: PV-heavy, wind-heavy, load-heavy, mixed), and
  outputs a Gaussian over the four actions in [-1, 1] (eq. 25); the environment receives the sample clipped to
  [-1, 1]; evaluation plays the mean;
* a **centralised critic** sees the global ``env.state()`` (eq. 24), the agent id, the hour of the episode and (by
  default) the day's price and net-load profiles, and estimates agent i's return; it is used only in training.

The update is PPO's clipped surrogate (eq. 1-2) with the details the MAPPO authors (Yu et al., 2022, "The Surprising
Effectiveness of PPO in Cooperative Multi-Agent Games") found to matter: GAE, value normalisation by running
mean/std, value clipping, advantage normalisation, input normalisation, orthogonal initialisation, gradient
clipping, an (optional) entropy bonus, several epochs over shuffled minibatches. It reads top to bottom like
CleanRL's ``ppo_continuous_action.py``: :class:`Args` → networks → :func:`compute_gae` / :func:`ppo_losses` →
:func:`train` (rollout + update) → :class:`MAPPOPolicy` (evaluation) → checkpoints.

This module is a **separate consumer** of the environment: it imports only public names of :mod:`mmgrid_env`.

Hyper-parameter sets (``Args.from_preset``):

* ``"paper"`` — Table I of the BMAPPO paper: γ = 0.95, 128 hidden units, actor lr 3e-4, critic lr 1e-4,
  ε = 0.2, a buffer of 10 000 transitions per update, minibatch 96, up to 20 000 training episodes, on the
  ``"paper"`` preset (observation of eq. 24) with a critic on ``state()`` alone. The paper gives no λ, epochs,
  grad-norm or std: MAPPO's defaults (λ 0.95, 5 epochs, grad-norm 10, initial std 1), no entropy bonus.
* ``"default"`` (the :class:`Args` defaults) — what worked best here (docs/results.md): preset
  ``"paper_day_ahead"``, the action stages (``Args.action_stages``) MT in merit order of the observed price, SoC
  shield, MT cover and the trade centred on each microgrid's own balance (the actor then decides the battery and
  the trade offsets),
  γ = 0.99 (energy bought at noon is sold in the evening: γ = 0.95 discounts 8 h by a third), λ = 0.3, 10 epochs
  over 1 536-transition rollouts in minibatches of 192, actor and critic lr 1e-3 annealed to 0, initial std 0.6,
  30 000 episodes, the exogenous reward baseline (``reward_baseline="net_load"``) and the privileged critic
  inputs (``critic_day_profile``).

**A correction to the rules** (``Args.base_policy``, e.g. ``--base-policy rule_based_day_ahead --action-stages
soc_shield``): the actor's outputs move the set-points of a reference rule-based policy by up to ±``base_residual``
of half of each range (:class:`ResidualOnPolicy`), so an untrained actor (mean ≈ 0) already plays the rules and
learning spends its samples on what the rules cannot do (docs/results.md measures it on the feeder). With
``--base-setpoints ess`` only the battery comes from the rules (:class:`ESSFromBase`): MT and trade go through the
action stages as without a reference, so the trade can still leave part of a balance to the feeder.

Episodes are one day (24 hourly steps) that the environment ends by truncation. We treat the day end as
**terminal** (no bootstrap): the objective is the day's cost and the evaluation harness, the oracle and the paper
all score a day on its own. Rollouts always hold whole days, so GAE never needs a bootstrap value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Normal

from mmgrid_env import control, parallel_env
from mmgrid_env.control import ActionChain

from .common import CheckpointError, CsvLog, EnvCopies, first_line, load_payload, save_payload, state_dict_sha256

__all__ = ["Args", "HYPERPARAMETER_SETS", "Actor", "Critic", "RunningMeanStd", "MAPPOAgent", "compute_gae",
           "ppo_losses", "train", "TrainResult", "MAPPOPolicy", "save_checkpoint", "load_checkpoint",
           "policy_from_checkpoint", "CheckpointError", "state_dict_sha256", "make_env", "day_profiles",
           "greedy_day_cost", "tensorboard_available", "make_action_map", "ResidualOnPolicy", "ESSFromBase",
           "neighbour_net_load", "actor_inputs"]

HOURS = 24  # steps per episode (one day); the env ends every episode by truncation after 24 steps


# ====================================================================================================== arguments
@dataclass
class Args:
    """Every knob of a run. ``Args.from_preset("default" | "feeder" | "paper", **overrides)`` builds a named set."""

    # --- experiment
    seed: int = 1
    """Seeds torch, numpy and the environments: the same seed (on the same machine) gives the same run."""
    torch_deterministic: bool = True
    """``torch.use_deterministic_algorithms`` (and cudnn.deterministic) for reproducibility."""
    device: str = "cpu"
    """``"cpu"`` or ``"cuda"`` (falls back to cpu when CUDA is unavailable)."""
    torch_threads: int = 1
    """``torch.set_num_threads``: the networks are small and the environment is CPU-bound."""
    env_workers: int = 0
    """Worker processes that step the env copies (0: this process steps them). The numbers do not depend on it,
    the speed does: the env's steps (the upper layer's solves, mostly) run on other cores while this process runs
    the networks, which then wait for them (docs/performance.md: 2 workers on 2 free cores, 1.15× the env steps/s
    of a 1 280-episode run, their 8.5 s start included). ``examples/train_mappo.py`` picks one per free core unless
    told."""

    # --- environment
    env_preset: str = "paper_day_ahead"
    """Environment preset: ``"paper_day_ahead"`` (default: the observation of eq. 23 plus the hour of day and the
    next 11 hours of day-ahead prices, published by the auction the day before), ``"paper_extras"`` (the hour and
    the next hour's price only) or ``"paper"`` (eq. 23 only: without the hour, a memoryless actor cannot tell
    morning from evening at the same price, which costs battery arbitrage; see docs/results.md)."""
    reward_mode: str = "shared"
    """``"shared"`` (cooperative: every agent gets r_t/N) or ``"individual"`` (see the env docs)."""
    num_envs: int = 8
    """Environment copies stepped in a plain loop; their transitions fill one rollout batch together."""
    train_day: int = -1
    """-1: every episode is a day drawn from the train split. A day index: train on that one day only (tests,
    debugging)."""

    # --- budget and rollout
    total_episodes: int = 30000
    """Training episodes (days) in all, over all env copies (Table I: up to 20 000). 30 000 take about 8–12 min on
    2 CPU cores (docs/performance.md); 20 000 cost ~4 €/day more on the test days (docs/results.md)."""
    buffer_size: int = 1536
    """Joint transitions (env steps) collected per update, rounded up to whole days on every env copy
    (Table I's "experience replay pool" D = 10 000). Each joint transition holds one sample per agent."""

    # --- PPO / MAPPO
    gamma: float = 0.99
    """Discount factor γ (Table I: 0.95)."""
    gae_lambda: float = 0.3
    """λ of generalised advantage estimation. Small: most decisions (MT, trade) act within the hour, and a short
    λ keeps the advantage from summing the noise of 16 action dimensions over many hours (0.95 learns slower). The
    ``feeder`` set uses 0.8: there the batteries' timing against each other and the feeder's sharing pay hours
    later, and 0.6, then 0.8, ended cheaper on the feeder's validation days (docs/results.md)."""
    hidden: int = 128
    """Hidden units per layer, two layers in actor and critic (Table I: 128)."""
    actor_lr: float = 1e-3
    """Actor learning rate l_a (Table I: 3e-4)."""
    critic_lr: float = 1e-3
    """Critic learning rate l_c (Table I: 1e-4)."""
    anneal_lr: bool = True
    """Anneal both learning rates linearly to 0 over training."""
    update_epochs: int = 10
    """Passes over each rollout batch."""
    minibatch_size: int = 192
    """Joint transitions per minibatch (each with one sample per agent; Table I: B = 96). 192 instead of 96 raises
    the throughput from ~620 to ~700 env steps/s (fewer optimiser steps) with no measurable loss."""
    clip_coef: float = 0.2
    """ε of the clipped surrogate (eq. 1-2; Table I: 0.2)."""
    clip_vloss: bool = True
    """Clip the value update around the old prediction (in normalised units, by ``clip_coef``)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 1.0
    """Value-loss coefficient (actor and critic have separate optimisers, so it only scales the critic loss)."""
    max_grad_norm: float = 0.5
    """Global-norm gradient clipping, separately for actor and critic."""
    norm_adv: bool = True
    """Normalise advantages over the whole rollout batch (MAPPO's choice)."""
    value_norm: bool = True
    """Normalise value targets by a running mean/std of the returns (MAPPO's ValueNorm)."""
    obs_norm: bool = True
    """Normalise actor/critic inputs by running mean/std (frozen at evaluation; prices spike to ~9 scale units)."""
    reward_scale: float = 0.01
    """Rewards are multiplied by this before learning (team cost is O(10-100) € per step)."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian actions (state-independent, learned)."""
    reward_baseline: str = "net_load"
    """``"net_load"``: add c_t·(P_load − P_PV − P_WT) € (the cost of buying the net load at the price) to each
    agent's reward before learning. The term depends only on exogenous data that no action changes, so the optimal
    policy and the expected policy gradient are unchanged; it removes most of the day-to-day variance of returns
    (a control variate). ``"none"``: learn from the raw rewards."""
    critic_day_profile: bool = True
    """Privileged critic input (training only): the current day's 24 prices and each microgrid's 24 net loads
    (P_load − P_PV − P_WT, ÷ load peak), appended to ``state()``. The value of stored energy depends on the
    prices still to come, which ``state()`` does not show; actors never see this."""
    action_stages: tuple[str, ...] = ("merit_order_mt", "soc_shield", "mt_cover", "balance")
    """How the actor's four outputs become the env's action: the env's affine map (eq. 25), then these stages of
    :class:`mmgrid_env.control.ActionChain`, in order (``()``: the outputs as they are, clipped). The default, each a
    hand-written prior computed from the agent's own observation (so execution stays decentralised):
    ``merit_order_mt`` runs the MT at clip((c_t − b)/(2a)) of the observed price (the actor's MT output is then
    unused); ``soc_shield`` clips the ESS request to what keeps the SoC in [soc_min, soc_max] (the SoC penalty is
    never paid; the policy gradient still uses the unclipped sample); ``mt_cover`` moves P_MT by what the trade
    limits cannot carry (without it a policy that turns the MT off at a cheap noon of a November day leaves the
    deficit to be shed at VOLL: docs/results.md); ``balance`` centres the trade P_grid on the microgrid's balance
    P_load − P_PV − P_WT − P_MT − P_ESS, the grid output moving it by ± ``balance_residual`` of half the trade
    range (Q_grid likewise around Q_load)."""
    balance_residual: float = 0.25
    """With the ``balance`` stage: how far (fraction of half the trade range) the grid outputs move the trade away
    from the balance. What a microgrid does not trade is left to the feeder, netted against its neighbours'
    imbalances; the ``feeder`` set uses 0.75."""
    base_policy: str = ""
    """``""`` (default): the actor's outputs go through ``action_stages``. A policy name of
    :data:`mmgrid_env.policies.POLICIES` (``"rule_based"``, ``"rule_based_day_ahead"``): the actor learns a
    **correction** to that policy's set-points, P = P_base + a·``base_residual``·(P_max − P_min)/2 per action
    (:class:`ResidualOnPolicy`); ``action_stages`` may then hold only ``"soc_shield"``. The reference policy runs
    on each agent's own observation (and its own past prices), so execution stays decentralised; an actor whose
    mean output is 0 plays the reference policy exactly."""
    base_residual: float = 0.25
    """With ``base_policy``: the largest correction, as a fraction of half of each set-point's range."""
    base_setpoints: str = "all"
    """With ``base_policy``: which set-points the reference policy gives. ``"all"`` (default): all four, corrected
    (:class:`ResidualOnPolicy`). ``"ess"``: only the battery's, corrected by the actor's ESS output
    (:class:`ESSFromBase`); MT and trade go through ``action_stages`` as without a base policy, so the trade can
    still leave part of the balance to the feeder."""
    actor_neighbours: bool = False
    """Append to each actor's observation the other microgrids' total net load of the hour, Σ_{j≠i} (P_load −
    P_PV − P_WT)_j ÷ Σ_{j≠i} load peak_j (:func:`neighbour_net_load`): what a sharing platform on which every
    microgrid publishes its net-load forecast for the hour would tell it at dispatch time (execution stays
    decentralised: no neighbour's action or state of charge is seen)."""
    critic_feeder_profile: bool = False
    """With ``critic_day_profile`` on the full feeder: the critic also sees the feeder's own load of the day, hour by
    hour (:func:`day_profiles`), which with the microgrids' balances sets the voltages and losses of the upper
    layer (training only, like the rest of the day's profiles)."""
    critic_time_feature: bool = True
    """Give the centralised critic the hour of the episode (t/24). The day ends after 24 steps, so without it the
    value of a state is ambiguous; the critic is training-only, so this leaves execution decentralised."""

    # --- logging
    log_every_updates: int = 1
    """Write a CSV row (and TensorBoard scalars) every this many updates."""
    greedy_eval_every: int = 10
    """Every this many updates (and after the last), play the mean action on ``greedy_eval_days`` fixed *training*
    days and log its cost and SoC-violation rate (a noise-free learning curve; test days are never touched). 0: off."""
    greedy_eval_days: int = 8
    """How many training days (evenly spaced over the train split) the greedy evaluation plays."""

    @classmethod
    def from_preset(cls, name: str = "default", **overrides: Any) -> "Args":
        """A named hyper-parameter set (``"default"`` or ``"paper"``) with field overrides."""
        if name not in HYPERPARAMETER_SETS:
            raise ValueError(f"unknown hyper-parameter set {name!r}; known: {sorted(HYPERPARAMETER_SETS)}")
        fields_ = {f.name for f in dataclasses.fields(cls)}
        bad = set(overrides) - fields_
        if bad:
            raise ValueError(f"unknown Args field(s) {sorted(bad)}")
        return cls(**{**HYPERPARAMETER_SETS[name], **overrides})

    @property
    def episodes_per_env(self) -> int:
        """Days each env copy plays per rollout batch."""
        return max(1, math.ceil(self.buffer_size / (HOURS * self.num_envs)))

    @property
    def rollout_steps(self) -> int:
        """Joint transitions per rollout batch (a whole number of days on every env copy)."""
        return self.episodes_per_env * HOURS * self.num_envs

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.total_episodes / (self.episodes_per_env * self.num_envs)))


HYPERPARAMETER_SETS: dict[str, dict[str, Any]] = {
    # The defaults of Args: what worked best on the bundled data (docs/results.md).
    "default": {},
    # The feeder preset's choice, made on its validation days (docs/results.md, "Reference learners on the feeder
    # preset"): the default plus each actor seeing the other microgrids' net load (``actor_neighbours``, session 8)
    # and a longer GAE λ (0.3 → 0.6 in session 11: −11.0 €/day on validation, paired, 5 seeds, same budget; 0.6 → 0.8
    # in session 12: −9.2 €/day more), and a wider trade residual (0.25 → 0.5 in session 13: −4.5 €/day, paired, and
    # more of the value of the network left to the feeder to net; 0.5 → 0.75 in session 14: −5.9 €/day more).
    "feeder": dict(env_preset="feeder", actor_neighbours=True, gae_lambda=0.8, balance_residual=0.75),
    # Table I of the BMAPPO paper; the rest are MAPPO's published defaults for continuous control.
    "paper": dict(gamma=0.95, hidden=128, actor_lr=3e-4, critic_lr=1e-4, clip_coef=0.2, buffer_size=10000,
                  minibatch_size=96, total_episodes=20000,
                  # not in Table I: MAPPO's defaults (Yu et al.) where they exist, else the plainest choice
                  gae_lambda=0.95, update_epochs=5, max_grad_norm=10.0, init_log_std=0.0, ent_coef=0.0,
                  anneal_lr=False, reward_baseline="none", critic_time_feature=False, critic_day_profile=False,
                  env_preset="paper", action_stages=()),
}


# ====================================================================================================== networks
def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (the initialisation of PPO/MAPPO implementations)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class RunningMeanStd(nn.Module):
    """Running mean/variance (parallel Welford); the statistics are buffers, so they travel in ``state_dict``."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + b_count
        new_mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / tot
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)

    def normalize(self, x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        y = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + 1e-8)
        return y.clamp(-clip, clip) if clip is not None else y

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.sqrt(self.var.to(y.dtype) + 1e-8) + self.mean.to(y.dtype)


def mlp(n_in: int, hidden: int, n_out: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, n_out), std=out_std))


class Actor(nn.Module):
    """Shared decentralised actor: (own observation ⊕ one-hot agent id) → Normal(mean, exp(log_std))."""

    def __init__(self, obs_dim: int, n_agents: int, act_dim: int, hidden: int, init_log_std: float, obs_norm: bool):
        super().__init__()
        self.n_agents, self.use_obs_norm = n_agents, obs_norm
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.mean = mlp(obs_dim + n_agents, hidden, act_dim, out_std=0.01)  # small last layer: start near a = 0
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def features(self, obs: torch.Tensor, agent_id: torch.Tensor) -> torch.Tensor:
        if self.use_obs_norm:
            obs = self.obs_rms.normalize(obs, clip=10.0)
        onehot = nn.functional.one_hot(agent_id, self.n_agents).to(obs.dtype)
        return torch.cat([obs, onehot], dim=-1)

    def dist(self, obs: torch.Tensor, agent_id: torch.Tensor) -> Normal:
        mu = self.mean(self.features(obs, agent_id))
        return Normal(mu, self.log_std.expand_as(mu).exp())

    def act_deterministic(self, obs: torch.Tensor, agent_id: torch.Tensor) -> torch.Tensor:
        return self.mean(self.features(obs, agent_id)).clamp(-1.0, 1.0)


class Critic(nn.Module):
    """Centralised critic: (global state ⊕ one-hot agent id [⊕ t/24]) → agent i's value, in normalised units."""

    def __init__(self, state_dim: int, n_agents: int, hidden: int, time_feature: bool, obs_norm: bool):
        super().__init__()
        self.n_agents, self.time_feature, self.use_obs_norm = n_agents, time_feature, obs_norm
        self.state_rms = RunningMeanStd((state_dim,))
        self.v = mlp(state_dim + n_agents + int(time_feature), hidden, 1, out_std=1.0)

    def forward(self, state: torch.Tensor, agent_id: torch.Tensor, hour: torch.Tensor) -> torch.Tensor:
        if self.use_obs_norm:
            state = self.state_rms.normalize(state, clip=10.0)
        parts = [state, nn.functional.one_hot(agent_id, self.n_agents).to(state.dtype)]
        if self.time_feature:
            parts.append((hour.to(state.dtype) / HOURS).unsqueeze(-1))
        return self.v(torch.cat(parts, dim=-1)).squeeze(-1)


class MAPPOAgent(nn.Module):
    """Actor + critic + value normaliser: everything a checkpoint holds besides the config."""

    def __init__(self, obs_dim: int, state_dim: int, n_agents: int, act_dim: int, args: Args):
        super().__init__()
        self.obs_dim, self.state_dim, self.n_agents, self.act_dim = obs_dim, state_dim, n_agents, act_dim
        self.actor = Actor(obs_dim, n_agents, act_dim, args.hidden, args.init_log_std, args.obs_norm)
        self.critic = Critic(state_dim, n_agents, args.hidden, args.critic_time_feature, args.obs_norm)
        self.value_rms = RunningMeanStd(())
        self.use_value_norm = args.value_norm

    def denorm_value(self, v_norm: torch.Tensor) -> torch.Tensor:
        return self.value_rms.denormalize(v_norm) if self.use_value_norm else v_norm

    def norm_value(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_rms.normalize(v) if self.use_value_norm else v


# ====================================================================================================== GAE, loss
def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, next_value: np.ndarray | float,
                gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the first axis (time).

    ``rewards``, ``values``: shape (T, ...). ``dones[t]`` = 1 when the episode ends after step t (then nothing is
    bootstrapped past it); ``dones`` broadcasts against ``rewards``. ``next_value``: V of the state after the last
    step (ignored where ``dones[-1]`` = 1). Returns (advantages, returns = advantages + values).

    δ_t = r_t + γ·(1 − d_t)·V_{t+1} − V_t,   A_t = δ_t + γλ·(1 − d_t)·A_{t+1}.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    dones = np.broadcast_to(np.asarray(dones, dtype=np.float64).reshape(
        np.shape(dones) + (1,) * (rewards.ndim - np.ndim(dones))), rewards.shape)
    adv = np.zeros_like(rewards)
    last = np.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        v_next = np.asarray(next_value, dtype=np.float64) if t == rewards.shape[0] - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * v_next * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def ppo_losses(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
               new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_coef: float, clip_vloss: bool = True) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate (eq. 1-2, as a loss to minimise) and the (clipped) value loss.

    policy_loss = −mean(min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)),  ρ = exp(new_logp − old_logp);
    value_loss  = ½·mean(max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²))  (or ½·mean((V − R)²)).
    Also returns ``approx_kl`` ((ρ − 1) − log ρ, Schulman's estimator) and ``clipfrac`` (no gradients).
    """
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    surr1 = ratio * advantages
    surr2 = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * advantages
    policy_loss = -torch.min(surr1, surr2).mean()
    if clip_vloss:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
        value_loss = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((new_values - returns) ** 2).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return {"policy_loss": policy_loss, "value_loss": value_loss, "approx_kl": approx_kl, "clipfrac": clipfrac}


# ====================================================================================================== training
@dataclass
class TrainResult:
    """What :func:`train` returns: the trained agent, the per-episode learning curve and the throughput."""

    agent: MAPPOAgent
    args: Args
    env_info: dict[str, Any]
    episodes: list[dict[str, float]] = field(default_factory=list)
    """One row per finished training episode: episode, global_step, return (team, €-scale), cost_eur, soc_violation_rate."""
    updates: list[dict[str, float]] = field(default_factory=list)
    """One row per update: losses, kl, clipfrac, std, learning rates, SPS."""
    env_steps_per_s: float = 0.0
    """Environment steps per second over the whole run (rollouts and updates)."""
    wall_s: float = 0.0


def _net_load_cost(infos: dict, agents: list[str], reward_mode: str) -> np.ndarray:
    """c_t·(P_load − P_PV − P_WT)·Δt € per agent (its own in "individual" mode, the team's share in "shared")."""
    own = np.array([infos[a]["price_eur_per_kwh"] * (infos[a]["p_load_kw"] - infos[a]["p_pv_kw"]
                                                      - infos[a]["p_wt_kw"]) for a in agents])
    return own if reward_mode == "individual" else np.full(len(agents), own.sum() / len(agents))


def day_profiles(env, feeder: bool = False) -> np.ndarray:
    """(n_days, 24·(1 + N [+ 1])) privileged critic features of every day: prices ÷ price scale, then each
    microgrid's net load (P_load − P_PV − P_WT) ÷ its load peak, hour by hour (public data: ``env.dataset``,
    ``env.config``). With ``feeder`` (full feeder only), then the feeder's own loads as the upper layer scales them
    (``opf.background_load_scale`` × the dataset's load in p.u.): what, with the microgrids' balances, sets the
    feeder's voltages and losses."""
    ds, cfg = env.dataset, env.config
    feats = [ds.price_eur_per_kwh / cfg.price_scale_eur_per_kwh]
    for mg in cfg.microgrids:  # each microgrid's own profiles
        feats.append((mg.load_peak_kw * ds.column(mg.load_profile) - mg.pv_kwp * ds.column(mg.pv_profile)
                      - mg.wt_kw * ds.column(mg.wind_profile)) / mg.load_peak_kw)
    if feeder:
        if cfg.opf.topology != "feeder":
            raise ValueError("critic_feeder_profile needs the full feeder (opf.topology='feeder', e.g. "
                             f"env_preset='feeder'), got topology {cfg.opf.topology!r}")
        feats.append(cfg.opf.background_load_scale * ds.load_pu)
    return np.concatenate(feats, axis=1).astype(np.float32)


def _resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        print(f"warning: device {name!r} requested but CUDA is unavailable; using cpu")
        return torch.device("cpu")
    return torch.device(name)


class ResidualOnPolicy:
    """Actor outputs → env actions as a correction to a reference policy: set-points
    P = P_base(o) + a·ρ·(P_max − P_min)/2 (a ∈ [-1, 1]⁴, ρ = ``residual``), then (``soc_shield``) P_ESS clipped to
    the operational SoC limits, clipped to the ranges and mapped onto [-1, 1]⁴.

    The reference policies of :mod:`mmgrid_env.policies` keep state (their window of past prices and an hour
    counter), so there is one per environment copy (``copies``); call :meth:`reset` at the start of every day, as
    the evaluation harness calls a policy's ``reset()``. Observations are (copies, N, obs_dim), or (N, obs_dim)
    with one copy; each call advances the reference policies by one hour.
    """

    def __init__(self, env_or_config: Any, base: str, residual: float = 0.25, shield: bool = True,
                 copies: int = 1):
        from mmgrid_env.policies import make_policy

        if base not in ("rule_based", "rule_based_day_ahead"):
            raise ValueError(f"base policy must be 'rule_based' or 'rule_based_day_ahead' (a policy with "
                             f"set-points), got {base!r}")
        if not 0.0 < float(residual) <= 2.0:
            raise ValueError(f"base_residual must be in (0, 2] (a fraction of half the range), got {residual!r}")
        if int(copies) < 1:
            raise ValueError(f"copies must be >= 1, got {copies!r}")
        self.base, self.residual, self.shield = base, float(residual), bool(shield)
        self.bases = [make_policy(base, env_or_config) for _ in range(int(copies))]
        self.fleet = control.fleet_of(env_or_config)
        self.dt_h = float(self.bases[0].config.dt_h)
        self._half = 0.5 * self.residual * (self.fleet.action_high - self.fleet.action_low)

    @property
    def spec(self) -> dict:
        return {"base": self.base, "residual": self.residual, "shield": self.shield}

    def reset(self) -> None:
        """Start of a day on every copy (the reference policies' hour counters restart)."""
        for b in self.bases:
            b.reset()

    def setpoints(self, obs, actions) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        single = obs.ndim == 2
        obs_c = obs[None] if single else obs
        if obs_c.shape[0] != len(self.bases):
            raise ValueError(f"observations for {obs_c.shape[0]} env copies, but the map holds {len(self.bases)}")
        sp = np.stack([b.setpoints(o) for b, o in zip(self.bases, obs_c)])
        sp = sp + np.clip(np.asarray(actions, np.float64).reshape(sp.shape), -1.0, 1.0) * self._half
        if self.shield:
            soc = np.clip(obs_c[..., control.observation_columns(self.bases[0].config)["soc"]], 0.0, 1.0)
            max_cha, max_dis = control.ess_operational_limits_kw(self.fleet, soc, self.dt_h)
            sp[..., 1] = np.clip(sp[..., 1], -max_cha, max_dis)
        return sp[0] if single else sp

    def __call__(self, obs, actions) -> np.ndarray:
        return control.setpoints_to_actions(self.fleet, self.setpoints(obs, actions))

    def __repr__(self) -> str:
        return f"ResidualOnPolicy(base={self.base!r}, residual={self.residual}, shield={self.shield})"


def neighbour_net_load(config: Any, obs: np.ndarray, fleet: Any = None) -> np.ndarray:
    """(…, N, 1): for each microgrid, the other microgrids' total net load P_load − P_PV − P_WT (kW) of the hour
    over their total load peak, from the stacked observations (…, N, obs_dim). ``fleet``: the config's ratings, if
    the caller holds them (built from ``config`` otherwise)."""
    fleet = control.fleet_of(config) if fleet is None else fleet
    seen = control.observe(config, obs, fleet)
    net = seen.load_kw - seen.pv_kw - seen.wt_kw
    peaks = fleet.load_peak_kw
    others = (net.sum(-1, keepdims=True) - net) / (peaks.sum() - peaks)
    return others[..., None].astype(np.float32)


def actor_inputs(args: Args, config: Any, obs: np.ndarray, fleet: Any = None) -> np.ndarray:
    """The actor's input (…, N, obs_dim [+ 1]): each agent's observation [⊕ :func:`neighbour_net_load`]."""
    obs = np.asarray(obs, np.float32)
    if not args.actor_neighbours:
        return obs
    return np.concatenate([obs, neighbour_net_load(config, obs, fleet)], axis=-1)


class ESSFromBase:
    """Actor outputs → env actions with the battery centred on a reference policy: the ESS set-point is the
    reference's, moved by the actor's ESS output a·ρ·(P_max − P_min)/2 (:class:`ResidualOnPolicy` on that one
    set-point), and the four outputs then go through an :class:`~mmgrid_env.control.ActionChain` (``stages``) as
    without a reference: MT in merit order, SoC shield, trade around the balance. So an untrained actor (mean 0)
    cycles the battery as the rules do, and the trade residual still lets a microgrid leave part of its balance
    to the feeder. One reference policy per environment copy; call :meth:`reset` at the start of every day."""

    def __init__(self, env_or_config: Any, base: str, residual: float = 0.25, stages: Sequence[str] = (),
                 balance_residual: float = 0.25, copies: int = 1):
        self.reference = ResidualOnPolicy(env_or_config, base, residual, shield=False, copies=copies)
        self.chain = ActionChain(env_or_config, stages, balance_residual)
        fleet = self.chain.fleet
        self._low, self._span = fleet.action_low[..., 1], fleet.action_high[..., 1] - fleet.action_low[..., 1]

    @property
    def spec(self) -> dict:
        """The arguments that rebuild this map: ``ESSFromBase(env, **spec)``."""
        return {"base": self.reference.base, "residual": self.reference.residual, "stages": list(self.chain.stages),
                "balance_residual": self.chain.residual}

    def reset(self) -> None:
        self.reference.reset()

    def __call__(self, obs, actions) -> np.ndarray:
        ess_kw = self.reference.setpoints(obs, actions)[..., 1]  # advances the reference by one hour
        a = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
        a[..., 1] = np.clip(2.0 * (ess_kw - self._low) / self._span - 1.0, -1.0, 1.0)  # the chain's own ESS map
        return self.chain(obs, a)

    def __repr__(self) -> str:
        return f"ESSFromBase(base={self.reference.base!r}, residual={self.reference.residual}, chain={self.chain!r})"


def make_action_map(args: Args, env, copies: int = 1) -> ActionChain | ResidualOnPolicy | ESSFromBase:
    """``(obs (…, N, obs_dim), actor outputs (…, N, 4)) → env actions``: the chain ``args.action_stages``, or
    with ``args.base_policy`` a :class:`ResidualOnPolicy` (``base_setpoints="all"``) or :class:`ESSFromBase`
    (``"ess"``) holding ``copies`` reference policies."""
    if args.base_setpoints not in ("all", "ess"):
        raise ValueError(f"base_setpoints must be 'all' or 'ess', got {args.base_setpoints!r}")
    if args.base_setpoints == "ess" and not args.base_policy:
        raise ValueError("base_setpoints='ess' takes the battery from a reference policy: set base_policy too")
    if args.base_policy and args.base_setpoints == "ess":
        return ESSFromBase(env, args.base_policy, args.base_residual, args.action_stages, args.balance_residual,
                           copies)
    if args.base_policy:
        extra = [s for s in args.action_stages if s != "soc_shield"]
        if extra:
            raise ValueError(f"with base_policy={args.base_policy!r} the only action stage allowed is 'soc_shield' "
                             f"(the reference policy sets the MT and the trade), got {extra}")
        return ResidualOnPolicy(env, args.base_policy, args.base_residual, "soc_shield" in args.action_stages,
                                copies)
    return ActionChain(env, args.action_stages, args.balance_residual)


def env_kwargs(args: Args, **env_overrides: Any) -> dict[str, Any]:
    """``parallel_env(**env_kwargs(args))`` is one training environment copy (the preset plus ``reward_mode`` and
    any overrides)."""
    return {"config": args.env_preset, "reward_mode": args.reward_mode, **env_overrides}


def make_env(args: Args, **env_overrides: Any):
    """One training environment copy (the preset plus ``reward_mode`` and any overrides)."""
    return parallel_env(**env_kwargs(args, **env_overrides))


def tensorboard_available() -> bool:
    """Whether TensorBoard logging works here (``torch.utils.tensorboard`` needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:  # noqa: BLE001 - optional dependency
        return False
    return True


def _tensorboard_writer(log_dir: str | None):
    if log_dir is None or not tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir)


def greedy_day_cost(env, policy: "MAPPOPolicy", days: list[int]) -> tuple[float, float, float]:
    """Mean (cost €, objective €, SoC-violation rate) of ``policy`` over whole ``days`` (mean actions)."""
    costs, objs, viol, n = [], [], 0, 0
    for d in days:
        obs, _ = env.reset(options={"day": int(d)})
        policy.reset()
        cost = obj = 0.0
        while env.agents:
            obs, rew, _, _, infos = env.step(policy(obs))
            info0 = next(iter(infos.values()))
            cost += info0["cost_total_eur"]
            obj -= info0["team_reward"]
            viol += sum(inf["soc_violation"] > 1e-6 for inf in infos.values())
            n += len(infos)
        costs.append(cost)
        objs.append(obj)
    return float(np.mean(costs)), float(np.mean(objs)), viol / max(n, 1)


def train(args: Args, log_dir: str | None = None, progress: bool = True,
          callback: Callable[[dict[str, float]], None] | None = None,
          env_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train MAPPO on the **train split** of ``args.env_preset``.

    ``log_dir``: where ``progress.csv`` (one row per update) and TensorBoard events (if ``tensorboard`` is
    installed) go; ``None`` writes nothing. ``progress``: a tqdm bar with the live return and day cost.
    ``callback(row)`` is called after every update with that update's log row.
    """
    env_overrides = dict(env_overrides or {})
    # ------------------------------------------------------------------ seeding
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(max(1, args.torch_threads))
    if args.torch_deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    device = _resolve_device(args.device)

    # ------------------------------------------------------------------ environments
    env0 = make_env(args, **env_overrides)  # read for sizes, ratings and the dataset; the rollouts step copies
    eval_env = make_env(args, **env_overrides) if args.greedy_eval_every > 0 else None
    agents = list(env0.possible_agents)
    n_agents = len(agents)
    raw_obs_dim = int(env0.observation_space(agents[0]).shape[0])
    obs_dim = raw_obs_dim + int(args.actor_neighbours)  # the actor's input
    act_dim = int(env0.action_space(agents[0]).shape[0])
    state_dim = int(env0.state_space.shape[0])  # the critic's input: state() [⊕ the day's profiles]
    if args.critic_feeder_profile and not args.critic_day_profile:
        raise ValueError("critic_feeder_profile extends the day's profiles: set critic_day_profile too")
    profiles = day_profiles(env0, args.critic_feeder_profile) if args.critic_day_profile else None
    if profiles is not None:
        state_dim += profiles.shape[1]
    env_info = {"env_preset": args.env_preset, "reward_mode": args.reward_mode, "env_overrides": env_overrides,
                "agents": agents, "obs_dim": obs_dim, "state_dim": state_dim, "act_dim": act_dim}

    action_map = make_action_map(args, env0, copies=args.num_envs)
    fleet = control.fleet_of(env0)  # the ratings, read once (the neighbours' net load needs them every step)
    agent = MAPPOAgent(obs_dim, state_dim, n_agents, act_dim, args).to(device)

    def eval_map():  # a fresh map per greedy evaluation: a reference policy's state never mixes with the rollout's
        return make_action_map(args, env0) if args.base_policy else action_map

    actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=args.actor_lr, eps=1e-5)
    critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=args.critic_lr, eps=1e-5)

    E, N, T = args.num_envs, n_agents, args.episodes_per_env * HOURS
    agent_ids = torch.arange(N, device=device).repeat(E)  # (E*N,) agent index of each flattened row

    # rollout storage, time-major: (T, E, N, ...)
    b_obs = np.zeros((T, E, N, obs_dim), np.float32)
    b_state = np.zeros((T, E, state_dim), np.float32)
    b_hour = np.zeros((T, E), np.int64)
    b_act = np.zeros((T, E, N, act_dim), np.float32)
    b_logp = np.zeros((T, E, N), np.float32)
    b_vnorm = np.zeros((T, E, N), np.float32)   # critic output (normalised units)
    b_rew = np.zeros((T, E, N), np.float32)
    b_done = np.zeros((T, E), np.float32)

    # the copies the rollouts step (here or in worker processes): after every argument check, before anything to close
    envs = EnvCopies(env_kwargs(args, **env_overrides), E, args.env_workers)
    writer = _tensorboard_writer(log_dir)
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
    progress_csv = CsvLog(None if log_dir is None else os.path.join(log_dir, "progress.csv"))

    result = TrainResult(agent=agent, args=args, env_info=env_info)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.num_updates * args.episodes_per_env * E, unit="ep", desc="MAPPO", dynamic_ncols=True)

    global_step, episode_count, start = 0, 0, time.perf_counter()
    ep_ret = np.zeros(E)
    ep_cost = np.zeros(E)
    ep_viol = np.zeros(E)
    cur_obs = np.zeros((E, N, raw_obs_dim), np.float32)
    cur_state = np.zeros((E, int(env0.state_space.shape[0])), np.float32)
    cur_day = np.zeros(E, np.int64)
    first_reset = True
    try:
        for update in range(1, args.num_updates + 1):
            frac = 1.0 - (update - 1.0) / args.num_updates if args.anneal_lr else 1.0
            actor_opt.param_groups[0]["lr"] = frac * args.actor_lr
            critic_opt.param_groups[0]["lr"] = frac * args.critic_lr

            # -------------------------------------------------------------- rollout: whole days on every copy
            agent.eval()
            for t in range(T):
                if t % HOURS == 0:  # start a new day on every copy (train split only)
                    seeds = [args.seed * 1000 + e if first_reset else None for e in range(E)]
                    opts = {"split": "train"} if args.train_day < 0 else {"day": args.train_day}
                    cur_obs[:], cur_state[:], cur_day[:] = envs.reset(seeds, opts)
                    first_reset = False
                    if hasattr(action_map, "reset"):
                        action_map.reset()
                    ep_ret[:], ep_cost[:], ep_viol[:] = 0.0, 0.0, 0.0
                obs_np = cur_obs.copy()  # (E, N, raw_obs_dim): each agent's own observation
                actor_np = actor_inputs(args, env0.config, obs_np, fleet)  # (E, N, obs_dim)
                state_np = cur_state.copy()  # (E, state_dim)
                if profiles is not None:
                    state_np = np.concatenate([state_np, profiles[cur_day]], axis=1)
                hour_np = np.full(E, t % HOURS, np.int64)
                with torch.no_grad():
                    obs_t = torch.as_tensor(actor_np, device=device).reshape(E * N, obs_dim)
                    state_t = torch.as_tensor(state_np, device=device).repeat_interleave(N, dim=0)
                    hour_t = torch.as_tensor(hour_np, device=device).repeat_interleave(N)
                    dist = agent.actor.dist(obs_t, agent_ids)
                    action = dist.sample()
                    logp = dist.log_prob(action).sum(-1)
                    v_norm = agent.critic(state_t, agent_ids, hour_t)
                act_np = action.cpu().numpy().reshape(E, N, act_dim)
                env_act = action_map(obs_np, act_np)
                b_obs[t], b_state[t], b_hour[t] = actor_np, state_np, hour_np
                b_act[t], b_logp[t] = act_np, logp.cpu().numpy().reshape(E, N)
                b_vnorm[t] = v_norm.cpu().numpy().reshape(E, N)
                stepped, cur_state[:], cur_day[:] = envs.step(env_act)
                for e, (obs_e, rew, done, infos) in enumerate(stepped):
                    cur_obs[e] = obs_e
                    b_rew[t, e] = rew
                    if args.reward_baseline == "net_load":
                        b_rew[t, e] += _net_load_cost(infos, agents, args.reward_mode)
                    info0 = infos[agents[0]]
                    ep_ret[e] += sum(rew)
                    ep_cost[e] += info0["cost_total_eur"]
                    ep_viol[e] += sum(infos[a]["soc_violation"] > 0 for a in agents)
                    b_done[t, e] = float(done)
                global_step += E
                if t % HOURS == HOURS - 1:  # every copy finished its day
                    for e in range(E):
                        episode_count += 1
                        result.episodes.append({"episode": episode_count, "global_step": global_step,
                                                "return": float(ep_ret[e]), "cost_eur": float(ep_cost[e]),
                                                "soc_violation_rate": float(ep_viol[e] / (HOURS * N))})
                    if bar is not None:
                        recent = result.episodes[-max(E, 50):]
                        bar.update(E)
                        bar.set_postfix(ret=f"{np.mean([r['return'] for r in recent]):.0f}",
                                        cost=f"{np.mean([r['cost_eur'] for r in recent]):.0f}€",
                                        viol=f"{np.mean([r['soc_violation_rate'] for r in recent]):.3f}")

            # -------------------------------------------------------------- advantages (GAE) in € · reward_scale
            agent.train()
            values = agent.denorm_value(torch.as_tensor(b_vnorm, dtype=torch.float64)).numpy()
            rewards = b_rew.astype(np.float64) * args.reward_scale
            adv, ret = compute_gae(rewards, values, b_done, 0.0, args.gamma, args.gae_lambda)
            if args.value_norm:
                agent.value_rms.update(torch.as_tensor(ret))
            if args.obs_norm:
                agent.actor.obs_rms.update(torch.as_tensor(b_obs.reshape(-1, obs_dim)))
                agent.critic.state_rms.update(torch.as_tensor(b_state.reshape(-1, state_dim)))
            if args.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)

            # flatten to joint transitions (T*E, N, ...): a minibatch takes whole joint transitions
            B = T * E
            f_obs = torch.as_tensor(b_obs.reshape(B, N, obs_dim), device=device)
            f_state = torch.as_tensor(b_state.reshape(B, state_dim), device=device)
            f_hour = torch.as_tensor(b_hour.reshape(B), device=device)
            f_act = torch.as_tensor(b_act.reshape(B, N, act_dim), device=device)
            f_logp = torch.as_tensor(b_logp.reshape(B, N), device=device)
            f_vold = torch.as_tensor(b_vnorm.reshape(B, N), device=device)
            f_adv = torch.as_tensor(adv.reshape(B, N), dtype=torch.float32, device=device)
            f_ret_norm = agent.norm_value(torch.as_tensor(ret.reshape(B, N), device=device)).float()

            stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [],
                                             "approx_kl": [], "clipfrac": []}
            mb = min(args.minibatch_size, B)
            for _epoch in range(args.update_epochs):
                perm = torch.randperm(B, device=device)
                for lo in range(0, B, mb):
                    idx = perm[lo:lo + mb]
                    m = idx.numel()
                    ids = torch.arange(N, device=device).repeat(m)
                    dist = agent.actor.dist(f_obs[idx].reshape(m * N, obs_dim), ids)
                    new_logp = dist.log_prob(f_act[idx].reshape(m * N, act_dim)).sum(-1)
                    entropy = dist.entropy().sum(-1).mean()
                    new_v = agent.critic(f_state[idx].repeat_interleave(N, dim=0), ids,
                                         f_hour[idx].repeat_interleave(N))
                    losses = ppo_losses(new_logp, f_logp[idx].reshape(-1), f_adv[idx].reshape(-1), new_v,
                                        f_vold[idx].reshape(-1), f_ret_norm[idx].reshape(-1), args.clip_coef,
                                        args.clip_vloss)
                    actor_loss = losses["policy_loss"] - args.ent_coef * entropy
                    critic_loss = args.vf_coef * losses["value_loss"]
                    actor_opt.zero_grad(set_to_none=True)
                    critic_opt.zero_grad(set_to_none=True)
                    (actor_loss + critic_loss).backward()  # disjoint parameters: each optimiser sees its own
                    nn.utils.clip_grad_norm_(agent.actor.parameters(), args.max_grad_norm)
                    nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
                    actor_opt.step()
                    critic_opt.step()
                    for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac"):
                        stats[k].append(losses[k].item())
                    stats["entropy"].append(entropy.item())

            # -------------------------------------------------------------- logging
            greedy = {}
            if eval_env is not None and (update % args.greedy_eval_every == 0 or update == args.num_updates
                                         or update == 1):
                train_days = eval_env.dataset.train_days
                pick = np.linspace(0, len(train_days) - 1, args.greedy_eval_days).round().astype(int)
                g_cost, g_obj, g_viol = greedy_day_cost(eval_env, MAPPOPolicy(agent, agents, device=device,
                                                                          action_map=eval_map(),
                                                                          actor_neighbours=args.actor_neighbours,
                                                                          config=env0.config),
                                                        [int(train_days[i]) for i in pick])
                agent.train()
                greedy = {"greedy_cost_eur": g_cost, "greedy_objective_eur": g_obj,
                          "greedy_soc_violation_rate": g_viol}
            elapsed = time.perf_counter() - start
            recent = result.episodes[-args.episodes_per_env * E:]
            row = {"update": update, "episodes": episode_count, "global_step": global_step,
                   "episode_return": float(np.mean([r["return"] for r in recent])),
                   "episode_cost_eur": float(np.mean([r["cost_eur"] for r in recent])),
                   "soc_violation_rate": float(np.mean([r["soc_violation_rate"] for r in recent])),
                   **{k: float(np.mean(v)) for k, v in stats.items()},
                   "action_std": agent.actor.log_std.detach().exp().mean().item(),
                   "actor_lr": actor_opt.param_groups[0]["lr"], "critic_lr": critic_opt.param_groups[0]["lr"],
                   "greedy_cost_eur": float("nan"), "greedy_objective_eur": float("nan"),
                   "greedy_soc_violation_rate": float("nan"), **greedy,
                   "env_steps_per_s": global_step / elapsed, "wall_s": elapsed}
            result.updates.append(row)
            if update % args.log_every_updates == 0 or update == args.num_updates:
                progress_csv.write(row)
                if writer is not None:
                    for k, v in row.items():
                        if k not in ("update", "global_step"):
                            writer.add_scalar(f"mappo/{k}", v, global_step)
            if callback is not None:
                callback(row)
    finally:
        if bar is not None:
            bar.close()
        progress_csv.close()
        if writer is not None:
            writer.close()
        envs.close()
    result.wall_s = time.perf_counter() - start
    result.env_steps_per_s = global_step / max(result.wall_s, 1e-9)
    return result


# ====================================================================================================== execution
class MAPPOPolicy:
    """Decentralised execution: each agent's action from its own observation only, through the shared actor.

    A callable ``obs_dict -> action_dict`` for :func:`mmgrid_env.evaluate.evaluate`. ``deterministic=True``
    (default) plays the Gaussian's mean, clipped to [-1, 1]; otherwise it samples (seeded by ``seed``).
    """

    def __init__(self, agent: MAPPOAgent, agents: list[str], deterministic: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu", action_stages: Sequence[str] = (),
                 balance_residual: float = 0.25, action_map: Callable | None = None, base_policy: str = "",
                 base_residual: float = 0.25, actor_neighbours: bool = False, config: Any = None,
                 base_setpoints: str = "all"):
        self.agent = agent.to(device).eval()
        self.actor_neighbours, self.config, self._fleet = bool(actor_neighbours), config, None
        # the chain reads the env's ratings: built in bind_env (the harness calls it); a callable is used as it is
        self.action_map = action_map
        self.chain_spec = {"stages": list(action_stages), "residual": float(balance_residual)}
        self.base_spec = {"base_policy": base_policy, "base_residual": float(base_residual),
                          "base_setpoints": base_setpoints}
        self._needs_map = action_map is None and (bool(action_stages) or bool(base_policy))
        self._needs_env = self._needs_map or (self.actor_neighbours and config is None)
        self.agents = list(agents)
        self.index = {a: i for i, a in enumerate(self.agents)}
        self.deterministic = deterministic
        self.device = torch.device(device)
        self._gen = torch.Generator(device=self.device).manual_seed(seed)

    def reset(self) -> None:
        """Start of a day (the harness calls it): the actor is memoryless; a reference policy under a
        :class:`ResidualOnPolicy` map restarts its hour counter."""
        if hasattr(self.action_map, "reset"):
            self.action_map.reset()

    @classmethod
    def from_args(cls, agent: MAPPOAgent, agents: list[str], args: Args, **kwargs: Any) -> "MAPPOPolicy":
        """The policy with the action map ``args`` trained with (``kwargs``: deterministic, seed, device)."""
        return cls(agent, agents, action_stages=args.action_stages, balance_residual=args.balance_residual,
                   base_policy=args.base_policy, base_residual=args.base_residual, base_setpoints=args.base_setpoints,
                   actor_neighbours=args.actor_neighbours, **kwargs)

    def bind_env(self, env) -> None:
        """Build the action map from the env's ratings (the harness calls this)."""
        if self._needs_env:
            self.config = getattr(getattr(env, "unwrapped", env), "config", None)
            self._fleet = None
            if self._needs_map:
                args = Args(action_stages=tuple(self.chain_spec["stages"]),
                            balance_residual=self.chain_spec["residual"], **self.base_spec)
                self.action_map = make_action_map(args, env)

    @torch.no_grad()
    def __call__(self, observations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [a for a in observations]
        raw = np.stack([np.asarray(observations[a], np.float32) for a in names])
        if self.actor_neighbours:
            if self.config is None:
                raise RuntimeError("MAPPOPolicy with actor_neighbours needs the env's config: call bind_env(env)")
            if [self.index[a] for a in names] != list(range(len(self.agents))):
                raise ValueError("actor_neighbours needs every agent's observation, in agent order")
            if self._fleet is None:  # the ratings, read once
                self._fleet = control.fleet_of(self.config)
            raw = np.concatenate([raw, neighbour_net_load(self.config, raw, self._fleet)], axis=-1)
        obs = torch.as_tensor(raw, device=self.device)
        ids = torch.as_tensor([self.index[a] for a in names], device=self.device)
        actor = self.agent.actor
        if self.deterministic:
            act = actor.act_deterministic(obs, ids)
        else:
            dist = actor.dist(obs, ids)
            act = (dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=self._gen,
                                                         device=self.device)).clamp(-1.0, 1.0)
        out = act.cpu().numpy().astype(np.float32)
        if self._needs_map and self.action_map is None:
            raise RuntimeError(f"MAPPOPolicy with action stages {self.chain_spec['stages']} (base policy "
                               f"{self.base_spec['base_policy']!r}) needs the env's ratings: call bind_env(env)")
        if self.action_map is not None:
            if [self.index[a] for a in names] != list(range(len(self.agents))):
                raise ValueError("the action map needs every agent's observation, in agent order")
            out = self.action_map(np.stack([np.asarray(observations[a], np.float32) for a in names]), out)
        return {a: out[i] for i, a in enumerate(names)}


# ====================================================================================================== checkpoints
CHECKPOINT_FORMAT = "mmgrid-mappo/1"


def save_checkpoint(path: str | os.PathLike, agent: MAPPOAgent, args: Args, env_info: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
    """Save the state_dict with the config it was trained with (plain types only: loads with weights_only=True)
    and the state dict's SHA-256, which :func:`load_checkpoint` verifies."""
    payload = {"format": CHECKPOINT_FORMAT, "args": dataclasses.asdict(args), "env": dict(env_info),
               "state_dict": {k: v.detach().cpu() for k, v in agent.state_dict().items()},
               "extra": dict(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_payload(payload, path)


# Args fields added after the first checkpoints, with the behaviour those checkpoints were trained with.
_PRE_FIELD_VALUES: dict[str, Any] = {"action_map": "direct", "soc_shield": False, "balance_residual": 0.25,
                                     "balance_mt_cover": False, "mt_merit_order": False}


def _stages_of_old_args(saved: dict[str, Any]) -> tuple[str, ...]:
    """The action stages of a checkpoint saved with the five switches that preceded ``action_stages``."""
    balance = saved["action_map"] == "balance"
    return tuple(name for name, on in (("merit_order_mt", saved["mt_merit_order"]), ("soc_shield", saved["soc_shield"]),
                                       ("mt_cover", balance and saved["balance_mt_cover"]), ("balance", balance))
                 if on)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[MAPPOAgent, Args, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Returns ``(agent, args, env_info)``; ``env_info`` names the preset, reward mode, env overrides and agents.
    Raises :class:`CheckpointError` (naming the file) for a file that is not an intact MAPPO checkpoint: not a
    zip archive, truncated, a failed zip CRC or state dict SHA-256, another format, missing fields or weights that
    do not fit the network. Checkpoints saved without the SHA-256 (older code) load unchecked by it.
    """
    name = os.fspath(path)
    payload = load_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name}: not a MAPPO checkpoint of format {CHECKPOINT_FORMAT!r}")
    try:
        known = {f.name for f in dataclasses.fields(Args)}
        # a field the checkpoint predates takes the value it had before it existed, not today's default
        saved = dict(payload["args"])
        if "action_stages" not in saved:  # saved before the stages existed: its switches say which it used
            saved = {**_PRE_FIELD_VALUES, **saved}
            saved["action_stages"] = _stages_of_old_args(saved)
        saved["action_stages"] = tuple(saved["action_stages"])
        args = Args(**{k: v for k, v in saved.items() if k in known})
        env_info = payload["env"]
        agent = MAPPOAgent(env_info["obs_dim"], env_info["state_dim"], len(env_info["agents"]),
                           env_info["act_dim"], args)
        agent.load_state_dict(payload["state_dict"])
    except KeyError as e:
        raise CheckpointError(f"{name}: not a valid MAPPO checkpoint (missing field {e})") from e
    except (TypeError, ValueError, RuntimeError) as e:  # load_state_dict: missing keys or wrong shapes
        raise CheckpointError(f"{name}: not a valid MAPPO checkpoint ({first_line(e)})") from e
    return agent.to(device).eval(), args, env_info


def policy_from_checkpoint(path: str | os.PathLike, deterministic: bool = True, device: str = "cpu"
                           ) -> tuple[MAPPOPolicy, Args, dict[str, Any]]:
    """``(policy, args, env_info)`` for a saved checkpoint; evaluate it on ``env_info["env_preset"]``.

    Raises :class:`CheckpointError` as :func:`load_checkpoint` does."""
    agent, args, env_info = load_checkpoint(path, device=device)
    policy = MAPPOPolicy.from_args(agent, env_info["agents"], args, deterministic=deterministic, device=device)
    return policy, args, env_info
