"""Reference learners for mmgrid-env (separate consumers of the package's public API; they need PyTorch).

* :mod:`mmgrid_baselines.mappo` — MAPPO (centralised critic, decentralised actors).
* :mod:`mmgrid_baselines.ap_dqn` — AP-DQN (DQN + prioritized replay + attention).

The policies that need no training (rule-based, zero, random) live in the package: :mod:`mmgrid_env.policies`.
"""
