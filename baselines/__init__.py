"""Reference policies for mmgrid-env (separate consumers of the package's public API).

* :mod:`baselines.rule_based` — :class:`RuleBasedPolicy`, :class:`ZeroPolicy`, :class:`RandomPolicy`.
* :mod:`baselines.mappo` — MAPPO (needs PyTorch; import it explicitly).
"""

from .rule_based import POLICIES, RandomPolicy, RuleBasedPolicy, ZeroPolicy, make_policy

__all__ = ["RuleBasedPolicy", "ZeroPolicy", "RandomPolicy", "make_policy", "POLICIES"]
