"""mmgrid-env: networked microgrids for multi-agent reinforcement learning.

A PettingZoo ``ParallelEnv`` where each agent dispatches one microgrid and an upper-layer SOCP optimal power flow
on pandapower's ``case33bw`` routes surplus between microgrids. See ``MultiMicrogridEnv`` for the full docs.

>>> from mmgrid_env import parallel_env
>>> env = parallel_env()                       # the "paper" preset
>>> obs, infos = env.reset(seed=0)
"""

from __future__ import annotations

from pettingzoo.utils.conversions import parallel_to_aec, parallel_to_aec_wrapper

from .config import ConfigError, EnvConfig, MicrogridConfig, OPFConfig, make_config, presets
from .data import Dataset, DataError, load_dataset
from .env import AGENT_INFO_KEYS, SYSTEM_INFO_KEYS, MultiMicrogridEnv
from .network import Network, NetworkError, build_network
from . import control
from .wrappers import DiscreteActions, SafetyCosts
from .policies import POLICIES, RandomPolicy, RuleBasedPolicy, ZeroPolicy, make_policy, rule_based_day_ahead
from .opf import (STATUS_FALLBACK_SOLVER, STATUS_OPTIMAL, STATUS_SAFE_DISPATCH, ConicOPF, OPFResult,
                  balancing_prices)

__version__ = "0.11.0"

__all__ = [
    "parallel_env", "env", "raw_env", "MultiMicrogridEnv", "EnvConfig", "MicrogridConfig", "OPFConfig",
    "make_config", "presets", "ConfigError", "Dataset", "DataError", "load_dataset", "Network", "NetworkError",
    "build_network", "ConicOPF", "OPFResult", "balancing_prices", "STATUS_OPTIMAL", "STATUS_FALLBACK_SOLVER",
    "STATUS_SAFE_DISPATCH", "AGENT_INFO_KEYS", "SYSTEM_INFO_KEYS", "__version__", "DiscreteActions",
    "RuleBasedPolicy", "ZeroPolicy", "RandomPolicy", "make_policy", "rule_based_day_ahead", "POLICIES", "control",
    "SafetyCosts",
]


def parallel_env(config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides):
    """The ParallelEnv (see :class:`MultiMicrogridEnv` for arguments)."""
    return MultiMicrogridEnv(config, render_mode=render_mode, **overrides)


def raw_env(config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides):
    """The bare AEC env (PettingZoo's convention: no order-enforcing wrapper); :func:`env` adds it."""
    return parallel_to_aec_wrapper(parallel_env(config, render_mode=render_mode, **overrides))


def env(config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides):
    """The AEC version, through PettingZoo's ``parallel_to_aec`` (the bare :func:`raw_env` + order enforcing)."""
    return parallel_to_aec(parallel_env(config, render_mode=render_mode, **overrides))

# Oracle and evaluation harness. ``mmgrid_env.evaluate`` is the module mmgrid_env.evaluate, callable as the function
# (``mmgrid_env.evaluate(policy, split="test", oracle=True)``); it is imported on first use so that
# ``python -m mmgrid_env.evaluate`` runs cleanly.
from .oracle import (OraclePolicy, OracleResult, actions_from_dispatch, replay, solve_day,  # noqa: E402
                     solve_days)

__all__ += ["evaluate", "EvaluationResult", "compare_table", "plot_day", "OraclePolicy", "OracleResult",
            "actions_from_dispatch", "replay", "solve_day", "solve_days"]


def __getattr__(name: str):
    if name in ("evaluate", "EvaluationResult", "compare_table"):
        import importlib

        mod = importlib.import_module(".evaluate", __name__)
        return mod if name == "evaluate" else getattr(mod, name)
    if name == "plot_day":  # needs matplotlib: imported on first use
        from .plotting import plot_day

        return plot_day
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
