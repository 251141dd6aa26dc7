"""Reference learners for mmgrid-env (separate consumers of the package's public API; they need PyTorch).

* :mod:`mmgrid_baselines.mappo` — MAPPO (centralised critic, decentralised actors).
* :mod:`mmgrid_baselines.ap_dqn` — AP-DQN (DQN + prioritized replay + attention).
* :func:`load_policy` — either learner's checkpoint as a policy for :func:`mmgrid_env.evaluate`, with the preset it
  was trained on.

The policies that need no training (rule-based, zero, random) live in the package: :mod:`mmgrid_env.policies`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

__all__ = ["LoadedPolicy", "load_policy"]


class LoadedPolicy(NamedTuple):
    """A trained learner read back from its checkpoint, with what is needed to evaluate it as it was trained."""

    policy: Any  # a callable policy for :func:`mmgrid_env.evaluate` (``reset()``, ``__call__(observations)``)
    learner: str  # "mappo" or "ap_dqn"
    hyperparameters: dict[str, Any]  # the training Args as a plain dict (tuples as lists: JSON-ready)
    seed: int
    env_preset: str  # the preset the learner was trained on (its observation depends on it)
    env_overrides: dict[str, Any]


def load_policy(path: str | os.PathLike, deterministic: bool = True) -> LoadedPolicy:
    """Read a MAPPO (``mappo.pt``) or AP-DQN (``model.pt``) checkpoint as a policy; a fresh policy per call.

    Raises :class:`mmgrid_baselines.common.CheckpointError` (naming the file) for a file that is neither, and
    ``FileNotFoundError`` for a missing one."""
    from . import ap_dqn, mappo
    from .common import CheckpointError

    try:
        policy, args, env_info = mappo.policy_from_checkpoint(path, deterministic=deterministic)
        learner, preset, overrides = "mappo", env_info["env_preset"], env_info.get("env_overrides") or {}
    except CheckpointError as mappo_error:
        try:
            qnet, args = ap_dqn.load_checkpoint(path)
        except CheckpointError as dqn_error:
            name = os.fspath(path)
            why = {str(e).removeprefix(f"{name}: ") for e in (mappo_error, dqn_error)}
            raise CheckpointError(f"{name}: neither a MAPPO nor an AP-DQN checkpoint ({'; '.join(sorted(why))})"
                                  ) from dqn_error
        policy, learner = ap_dqn.APDQNPolicy(qnet, args), "ap_dqn"
        preset, overrides = args.config, args.env_overrides
    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(args).items()}
    return LoadedPolicy(policy, learner, hp, int(args.seed), preset, dict(overrides))
