#!/usr/bin/env bash
# Ray RLlib tier: one PPO training iteration of examples/rllib_ppo.py (tests/rllib/), shared policy, 2 env runners,
# ray.init(num_cpus=2). Its own venv (outside the repo): torch's CPU wheel first, then the exact pins of
# requirements/rllib.txt with torch held by a constraint, then the package itself. The main suite (.ci/run) and the
# third-party tier skip this test (importorskip("ray.rllib")): ray[rllib] pins gymnasium==1.2.2, older than the
# thirdparty pins, so it gets a venv of its own.
#   .ci/rllib.sh                   # fresh venv in ${TMPDIR:-/tmp}/mmgrid-rllib-venv
#   RLLIB_VENV=path .ci/rllib.sh
#   RLLIB_REUSE=1 .ci/rllib.sh     # keep an existing venv (local iteration)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# No usage-stats prompt or upload from Ray (CI has no network beyond the package index).
export RAY_USAGE_STATS_ENABLED=0
VENV="${RLLIB_VENV:-${TMPDIR:-/tmp}/mmgrid-rllib-venv}"
start=$(date +%s)
if [[ "${RLLIB_REUSE:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
pip install -q torch==2.13.0
pip install -q -c requirements/constraints-torch.txt -r requirements/rllib.txt -e ".[dev]"
python - <<'PY'
import gymnasium, pettingzoo, ray, torch
import ray.rllib  # noqa: F401
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print("ray", ray.__version__, "| torch", torch.__version__, "| gymnasium", gymnasium.__version__,
      "| pettingzoo", pettingzoo.__version__)
PY
installed=$(date +%s)
echo "rllib: install $((installed - start)) s, venv $(du -sm "$VENV" | cut -f1) MB"
python -m pytest tests/rllib -q -p no:cacheprovider
echo "rllib: tests $(( $(date +%s) - installed )) s, total $(( $(date +%s) - start )) s"
