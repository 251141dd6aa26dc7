#!/usr/bin/env bash
# Third-party tier: SuperSuit + stable-baselines3, TorchRL (tests/thirdparty/), and the packaging test with twine.
# Its own venv (outside the repo), torch's CPU wheel first, then the exact pins of requirements/thirdparty.txt with
# torch held by a constraint, then the package itself. The main suite (.ci/run) skips these tests (importorskip).
#   .ci/thirdparty.sh                  # fresh venv in ${TMPDIR:-/tmp}/mmgrid-thirdparty-venv
#   THIRDPARTY_VENV=path .ci/thirdparty.sh
#   THIRDPARTY_REUSE=1 .ci/thirdparty.sh   # keep an existing venv (local iteration)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
VENV="${THIRDPARTY_VENV:-${TMPDIR:-/tmp}/mmgrid-thirdparty-venv}"
start=$(date +%s)
if [[ "${THIRDPARTY_REUSE:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
pip install -q torch==2.13.0
pip install -q -c requirements/constraints-torch.txt -r requirements/thirdparty.txt -r requirements/packaging.txt \
    -e ".[dev]"
python - <<'PY'
import torch, gymnasium, pettingzoo, supersuit, stable_baselines3, torchrl, tensordict
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print("torch", torch.__version__, "| gymnasium", gymnasium.__version__, "| pettingzoo", pettingzoo.__version__,
      "| supersuit", supersuit.__version__, "| sb3", stable_baselines3.__version__, "| torchrl", torchrl.__version__,
      "| tensordict", tensordict.__version__)
PY
installed=$(date +%s)
echo "thirdparty: install $((installed - start)) s"
python -m pytest tests/thirdparty tests/test_packaging.py -q -p no:cacheprovider
echo "thirdparty: tests $(( $(date +%s) - installed )) s, total $(( $(date +%s) - start )) s"
