"""mmgrid-env: networked microgrids for multi-agent reinforcement learning.

A PettingZoo ``ParallelEnv`` where each agent dispatches one microgrid and an upper-layer SOCP optimal power flow
on pandapower's ``case33bw`` routes surplus between microgrids. See ``MultiMicrogridEnv`` for the full docs.

>>> from mmgrid_env import parallel_env
>>> env = parallel_env()                       # the "paper" preset
>>> obs, infos = env.reset(seed=0)
"""

from __future__ import annotations

from pettingzoo.utils.conversions import parallel_to_aec

from .config import ConfigError, EnvConfig, MicrogridConfig, OPFConfig, make_config, presets
from .data import Dataset, DataError, load_dataset
from .env import AGENT_INFO_KEYS, SYSTEM_INFO_KEYS, MultiMicrogridEnv
from .network import Network, NetworkError, build_network
from .opf import (STATUS_FALLBACK_SOLVER, STATUS_OPTIMAL, STATUS_SAFE_DISPATCH, ConicOPF, OPFResult,
                  balancing_prices)

__version__ = "0.1.0"

__all__ = [
    "parallel_env", "env", "raw_env", "MultiMicrogridEnv", "EnvConfig", "MicrogridConfig", "OPFConfig",
    "make_config", "presets", "ConfigError", "Dataset", "DataError", "load_dataset", "Network", "NetworkError",
    "build_network", "ConicOPF", "OPFResult", "balancing_prices", "STATUS_OPTIMAL", "STATUS_FALLBACK_SOLVER",
    "STATUS_SAFE_DISPATCH", "AGENT_INFO_KEYS", "SYSTEM_INFO_KEYS", "__version__",
]


def parallel_env(config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides):
    """The ParallelEnv (see :class:`MultiMicrogridEnv` for arguments)."""
    return MultiMicrogridEnv(config, render_mode=render_mode, **overrides)


raw_env = parallel_env


def env(config: EnvConfig | str | None = None, render_mode: str | None = None, **overrides):
    """The AEC version, through PettingZoo's ``parallel_to_aec``."""
    return parallel_to_aec(parallel_env(config, render_mode=render_mode, **overrides))
