"""The wheel: built from a copy of the sources, it ships the data with its licence notice and works when installed.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``, with the setuptools of the running
environment) from a copy of the files the build reads, so the working tree gets no ``build/`` or ``*.egg-info``.
It is installed with ``pip install --no-deps --target`` and imported, from outside the source tree, by a
subprocess of the current interpreter (the dependencies come from the current environment).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = "mmgrid_env/data/"
DATA_FILES = ("smard_lu_2024_hourly.csv.gz", "README.md", "LICENSE-SMARD-CC-BY-4.0.txt",
              "simbench_2016_hourly_profiles.csv.gz", "LICENSE-SimBench-ODbL-1.0.txt")



def _setuptools_too_old() -> str | None:
    """Why the offline build cannot run here (pyproject.toml's build-system needs setuptools>=77), or None."""
    try:
        from importlib.metadata import version

        v = version("setuptools")
    except Exception:  # noqa: BLE001
        return "setuptools is not installed (the offline build uses the environment's setuptools)"
    major = int(v.split(".")[0]) if v.split(".")[0].isdigit() else 0
    return None if major >= 77 else f"setuptools {v} < 77 (pyproject.toml's build-system requirement)"


pytestmark = pytest.mark.skipif(_setuptools_too_old() is not None, reason=str(_setuptools_too_old()))


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("mmgrid_env", "baselines"):  # baselines/ ships as the package `mmgrid_baselines`
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    proc = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(src), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("mmgrid_env-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_wheel_contents(wheel):
    import mmgrid_env

    assert wheel.name.startswith(f"mmgrid_env-{mmgrid_env.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in DATA_FILES:
        assert DATA + f in names, f"{DATA + f} missing from the wheel"
    dist_info = f"mmgrid_env-{mmgrid_env.__version__}.dist-info/"
    licences = {n for n in names if n.startswith(dist_info + "licenses/")}
    assert dist_info + "licenses/LICENSE" in licences, sorted(names)
    assert any(n.endswith("LICENSE-SMARD-CC-BY-4.0.txt") for n in licences), sorted(licences)
    assert any(n.endswith("LICENSE-SimBench-ODbL-1.0.txt") for n in licences), sorted(licences)
    assert not any(n.startswith(("tests/", "baselines/", "examples/", "benchmarks/")) for n in names)
    assert {"mmgrid_baselines/__init__.py", "mmgrid_baselines/mappo.py", "mmgrid_baselines/ap_dqn.py",
            "mmgrid_env/policies.py"} <= names
    meta = zipfile.ZipFile(wheel).read(dist_info + "METADATA").decode()
    assert "Name: mmgrid-env" in meta and "License-Expression: MIT" in meta
    assert "Requires-Dist: pettingzoo" in meta
    # the big data file is in the wheel uncorrupted: same bytes as the source
    assert zipfile.ZipFile(wheel).read(DATA + DATA_FILES[0]) == (ROOT / DATA / DATA_FILES[0]).read_bytes()


SMOKE = r"""
import sys
from importlib import resources
from pathlib import Path
import numpy as np
import mmgrid_env
from mmgrid_env import parallel_env
here = Path(mmgrid_env.__file__).resolve()
assert here.is_relative_to(Path(sys.argv[1]).resolve()), f"imported from {here}, not the installed wheel"
data = resources.files("mmgrid_env") / "data"
for name in ("smard_lu_2024_hourly.csv.gz", "README.md", "LICENSE-SMARD-CC-BY-4.0.txt"):
    assert (data / name).is_file(), name
env = parallel_env()
obs, infos = env.reset(seed=0, options={"split": "test"})
total, steps = 0.0, 0
while env.agents:
    obs, rew, term, trunc, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
    total += sum(rew.values()); steps += 1
assert steps == 24 and np.isfinite(total), (steps, total)
print("SMOKE-OK", mmgrid_env.__version__, steps, round(total, 3))
"""


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed into a folder of its own, first on ``PYTHONPATH``, run from a folder outside the
    repository (the scripts check ``__file__``: the packages come from the wheel, not the source tree)."""
    tmp = tmp_path_factory.mktemp("installed")
    target = tmp / "site"
    proc = _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), MPLBACKEND="Agg")
    return target, run_dir, env


def test_installed_wheel_runs_outside_the_source_tree(installed):
    target, run_dir, env = installed
    assert (target / "mmgrid_env" / "data" / "smard_lu_2024_hourly.csv.gz").is_file()
    proc = subprocess.run([sys.executable, "-c", SMOKE, str(target)], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SMOKE-OK" in proc.stdout


def test_installed_cli_evaluates_its_default_policy(installed):
    """``python -m mmgrid_env.evaluate`` from the wheel alone: the rule-based policy is part of the package."""
    target, run_dir, env = installed
    proc = subprocess.run([sys.executable, "-m", "mmgrid_env.evaluate", "--days", "4", "9", "--no-progress"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rule_based" in proc.stdout and "(2 days)" in proc.stdout


TRAIN = r"""
import sys
from pathlib import Path
import numpy as np
import mmgrid_baselines
from mmgrid_baselines.mappo import Args, MAPPOPolicy, train
from mmgrid_env import evaluate
assert Path(mmgrid_baselines.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), mmgrid_baselines.__file__
args = Args(seed=1, env_preset="paper", total_episodes=4, num_envs=2, buffer_size=48, greedy_eval_every=1,
            greedy_eval_days=1)
assert args.num_updates == 2
res = train(args, progress=False)
policy = MAPPOPolicy.from_args(res.agent, [f"mg_{i}" for i in range(4)], args)
ev = evaluate(policy, days=[4], config="paper", progress=False)
assert np.isfinite(ev.rows[0]["cost_eur"])
print("TRAIN-OK", args.num_updates, round(ev.rows[0]["cost_eur"], 2))
"""


def test_installed_learner_trains_and_evaluates(installed):
    """``pip install "mmgrid-env[baselines]"`` is enough to train MAPPO: two updates from the installed package."""
    pytest.importorskip("torch")
    target, run_dir, env = installed
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(target)], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TRAIN-OK 2" in proc.stdout


def test_twine_check(wheel):
    if importlib.util.find_spec("twine") is None:
        pytest.skip("twine is not installed (it is pinned in requirements/packaging.txt; the third-party tier, "
                    ".ci/thirdparty.sh, runs this check)")
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
