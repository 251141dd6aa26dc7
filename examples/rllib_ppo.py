"""Shared-policy PPO with Ray RLlib on mmgrid-env, locally or on a Ray cluster.

Every microgrid agent is mapped to one policy ("shared", parameter sharing); RLlib's new API stack
(RLModule / Learner / EnvRunner) trains it. The PettingZoo env is wrapped in RLlib's ``ParallelPettingZooEnv``.

Install (not part of the package's extras; ray pins its own gymnasium, 1.2.2 for ray 2.60, which mmgrid-env
accepts):

    pip install torch==2.13.0 && pip install -c requirements/constraints-torch.txt -r requirements/rllib.txt -e .

Run locally (2 CPUs: the driver/learner plus one env runner):

    python examples/rllib_ppo.py --iterations 1
    python examples/rllib_ppo.py --iterations 200 --num-env-runners 1 --checkpoint runs/rllib_ppo

On a cluster (``ray start --head`` on the head node, ``ray start --address=HEAD:6379`` on the workers; every node
needs the same Python environment, or pass ``--runtime-env-pip``):

    python examples/rllib_ppo.py --address auto --num-env-runners 32 --iterations 500

See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

ENV_NAME = "mmgrid_v1"
POLICY = "shared"


def env_creator(env_config: dict):
    """RLlib env factory: ``env_config`` = keyword overrides for :func:`mmgrid_env.parallel_env`."""
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from mmgrid_env import parallel_env

    cfg = dict(env_config)  # RLlib passes an EnvContext (a dict subclass with worker_index etc.)
    preset = cfg.pop("preset", None)
    return ParallelPettingZooEnv(parallel_env(preset, **cfg))


def policy_mapping_fn(agent_id, episode=None, **kwargs):
    return POLICY  # parameter sharing: every microgrid uses the same policy


def build_config(args):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    env_config = {"preset": args.preset, "reward_mode": args.reward_mode}
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .framework("torch")
        .env_runners(num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.envs_per_runner,
                     rollout_fragment_length="auto")
        .learners(num_learners=args.num_learners)
        .multi_agent(policies={POLICY}, policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={POLICY: RLModuleSpec(
            model_config={"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh"})}))
        .training(train_batch_size_per_learner=args.batch_size, minibatch_size=args.minibatch_size,
                  num_epochs=args.epochs, lr=args.lr, gamma=0.99, lambda_=0.95, clip_param=0.2,
                  entropy_coeff=0.0,
                  # RLlib caps each sample's squared value error at vf_clip_param (default 10) and a capped sample
                  # gives no gradient: with returns of -300 to -500 € nearly every sample was capped (vf_loss
                  # exactly 10, explained variance ~0). The rewards are not normalised, so no cap.
                  vf_clip_param=float("inf"))
        .debugging(seed=args.seed)
    )


def greedy_actions(module, obs: dict) -> dict:
    """Deterministic actions of the shared RLModule: the mean of its diagonal Gaussian, clipped to [-1, 1]."""
    import torch

    agents = list(obs)
    batch = torch.as_tensor(np.stack([obs[a] for a in agents]), dtype=torch.float32)
    with torch.no_grad():
        out = module.forward_inference({"obs": batch})
    mean = out["action_dist_inputs"][:, : out["action_dist_inputs"].shape[1] // 2].numpy()
    return {a: np.clip(mean[i], -1.0, 1.0).astype(np.float32) for i, a in enumerate(agents)}


def evaluate(algo, args, days: int) -> float:
    """Mean daily cost (€) of the greedy shared policy on the first ``days`` test days."""
    from mmgrid_env import parallel_env

    module = algo.get_module(POLICY)
    env = parallel_env(args.preset, reward_mode=args.reward_mode)
    test_days = env.dataset.split_days("test")[:days]
    costs = []
    for day in test_days:
        obs, _ = env.reset(options={"day": int(day)})
        cost = 0.0
        while env.agents:
            obs, _, _, _, infos = env.step(greedy_actions(module, obs))
            cost += infos[env.possible_agents[0]]["cost_total_eur"]
        costs.append(cost)
    return float(np.mean(costs))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' or HOST:PORT); default: start a local Ray with --num-cpus")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (ignored with --address)")
    p.add_argument("--num-env-runners", type=int, default=1)
    p.add_argument("--envs-per-runner", type=int, default=1)
    p.add_argument("--num-learners", type=int, default=0, help="0 = learn in the driver process")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=960, help="env steps per iteration (each = one hour for every agent; 960 = 40 days)")
    p.add_argument("--minibatch-size", type=int, default=192)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--preset", default="paper")
    p.add_argument("--reward-mode", default="shared", choices=["shared", "individual"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-days", type=int, default=2, help="greedy evaluation on this many test days (0: none)")
    p.add_argument("--checkpoint", default=None, help="directory to save the final checkpoint to")
    p.add_argument("--runtime-env-pip", nargs="*", default=None,
                   help="packages for Ray to pip-install on cluster nodes (e.g. mmgrid-env)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    import ray
    from ray.tune.registry import register_env

    init_kwargs = {"include_dashboard": False, "log_to_driver": False}
    if args.runtime_env_pip:
        init_kwargs["runtime_env"] = {"pip": args.runtime_env_pip}
    if args.address:
        ray.init(address=args.address, **init_kwargs)
    else:
        ray.init(num_cpus=args.num_cpus, **init_kwargs)
    register_env(ENV_NAME, env_creator)

    algo = build_config(args).build_algo()
    try:
        for it in range(1, args.iterations + 1):
            t0 = time.perf_counter()
            result = algo.train()
            runners = result.get("env_runners", {})
            line = {
                "iteration": it,
                "seconds": round(time.perf_counter() - t0, 2),
                "env_steps_sampled_lifetime": runners.get("num_env_steps_sampled_lifetime"),
                "agent_steps_sampled_lifetime": runners.get("num_agent_steps_sampled_lifetime"),
                "episode_return_mean": runners.get("episode_return_mean"),
                "episodes_lifetime": runners.get("num_episodes_lifetime"),
            }
            print(json.dumps(line, default=float), flush=True)
        if args.eval_days:
            print(json.dumps({"eval_test_days": args.eval_days,
                              "mean_daily_cost_eur": round(evaluate(algo, args, args.eval_days), 2)}), flush=True)
        if args.checkpoint:
            print("checkpoint:", algo.save(args.checkpoint))
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
