"""What the learners share: checkpoint integrity (one error type, zip CRCs and a SHA-256 of the weights), the
CSV log of a training run and the env copies a rollout steps (in this process or in worker processes). Plain
helpers; each learner stays one readable file."""

from __future__ import annotations

import csv
import hashlib
import multiprocessing as mp
import os
import pickle
import struct
import tempfile
import traceback
import zipfile
import zlib
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["CheckpointError", "state_dict_sha256", "save_payload", "load_payload", "first_line", "CsvLog", "EnvCopies",
           "usable_cores"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not a checkpoint, truncated, corrupted, or of another format.

    The message starts with the file's path. A missing file raises ``FileNotFoundError`` instead.
    """


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict: every entry's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # the bytes, whatever the dtype (bf16 too)
    return h.hexdigest()


def save_payload(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` with the state dict's SHA-256 added, via a temporary file renamed into place."""
    payload = {**payload, "state_dict_sha256": state_dict_sha256(payload["state_dict"])}
    # torch can be told to skip the zip CRC32s (set_crc32_options); loading checks them, so write them always
    get_crc = getattr(torch.serialization, "get_crc32_options", None)
    crc_was_off = get_crc is not None and not get_crc()
    # the temporary file keeps path's name (torch names the archive's root folder after it), in a folder beside it
    tmp_dir = tempfile.mkdtemp(prefix=".ckpt-", dir=os.path.dirname(os.path.abspath(path)))
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    try:
        if crc_was_off:
            torch.serialization.set_crc32_options(True)
        torch.save(payload, tmp)
        os.replace(tmp, path)  # an interrupted save never leaves a half-written file at path
    finally:
        if crc_was_off:
            torch.serialization.set_crc32_options(False)
        if os.path.exists(tmp):
            os.remove(tmp)
        os.rmdir(tmp_dir)


def first_line(e: BaseException) -> str:
    """``"Type: first line of the message"``: torch's unpickler errors run over many lines."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's payload (on cpu, ``weights_only=True``) after checking the zip CRCs and the state dict hash.

    torch's zip reader does not check the CRC32s it writes, so a flipped bit in the weights would load silently:
    ``zipfile.testzip`` checks them first. Checkpoints saved before the hash existed load without that check.
    """
    name = os.fspath(path)
    with open(path, "rb") as fh:  # a missing file stays FileNotFoundError
        try:
            with zipfile.ZipFile(fh) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, struct.error,
                zlib.error) as e:
            raise CheckpointError(f"{name}: not a valid checkpoint (not a readable zip archive: "
                                  f"{first_line(e)})") from e
        if bad is not None:
            raise CheckpointError(f"{name}: corrupted checkpoint (zip member {bad!r} fails its CRC or header check)")
        fh.seek(0)
        try:
            payload = torch.load(fh, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError,
                IndexError, struct.error) as e:
            raise CheckpointError(f"{name}: not a valid checkpoint ({first_line(e)})") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{name}: not a valid checkpoint (no state_dict)")
    stored = payload.get("state_dict_sha256")
    if stored is not None:
        try:
            actual = state_dict_sha256(payload["state_dict"])
        except (AttributeError, TypeError, RuntimeError) as e:  # an entry that is not a tensor
            raise CheckpointError(f"{name}: not a valid checkpoint (state_dict: {first_line(e)})") from e
        if actual != stored:
            raise CheckpointError(f"{name}: corrupted checkpoint (state_dict SHA-256 {actual[:16]}... differs "
                                  f"from the stored {str(stored)[:16]}...)")
    return payload


class CsvLog:
    """A CSV file written row by row (the header from the first row's keys), flushed after each row; ``None`` path:
    a no-op. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike | None):
        self._fh = None if path is None else open(path, "w", newline="")
        self._writer = None

    def write(self, row: dict) -> None:
        if self._fh is None:
            return
        if self._writer is None:
            self._writer = csv.DictWriter(self._fh, fieldnames=list(row))
            self._writer.writeheader()
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "CsvLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------ env copies
def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Copies:
    """Some copies of one ParallelEnv, stepped one after the other in this process; agents in ``agents`` order."""

    def __init__(self, env_kwargs: dict[str, Any], n: int):
        from mmgrid_env import parallel_env

        self.envs = [parallel_env(**env_kwargs) for _ in range(n)]
        self.agents = list(self.envs[0].possible_agents)

    def _stack(self, obs: dict) -> np.ndarray:
        return np.stack([obs[a] for a in self.agents])

    def reset(self, seeds: list[int | None], options: dict) -> tuple:
        obs = [self._stack(env.reset(seed=s, options=options)[0]) for env, s in zip(self.envs, seeds)]
        return obs, [env.state() for env in self.envs], [env.day for env in self.envs]

    def step(self, actions: np.ndarray) -> tuple:
        """``actions`` (copies, agents, act_dim) → per copy: observations (agents, obs_dim), rewards (a list in
        agents order), whether the day ended, the infos dict, then every copy's ``state()`` and day."""
        out = []
        for env, act in zip(self.envs, actions):
            obs, rew, _, trunc, infos = env.step({a: act[i] for i, a in enumerate(self.agents)})
            out.append((self._stack(obs), [rew[a] for a in self.agents], all(trunc.values()), infos))
        return out, [env.state() for env in self.envs], [env.day for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, env_kwargs: dict[str, Any], n: int) -> None:
    """A worker process: builds its copies, then answers ("reset" | "step" | "close", argument) messages."""
    try:
        copies = _Copies(env_kwargs, n)
        conn.send(("ok", copies.agents))
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                copies.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", getattr(copies, cmd)(*arg)))
    except (EOFError, KeyboardInterrupt):  # the trainer went away
        return
    except BaseException:  # noqa: BLE001 - every failure goes back to the trainer, named
        conn.send(("error", traceback.format_exc()))


class EnvCopies:
    """``n`` copies of ``mmgrid_env.parallel_env(**env_kwargs)`` stepped together, as a rollout needs them.

    ``workers=0`` steps them one after the other in this process; ``workers=k`` splits them over ``k`` worker
    processes (copies 0…n−1 in contiguous blocks), so the upper layer's solves of different copies run on
    different cores. Either way every copy is the same seeded env doing the same thing: the numbers do not depend
    on ``workers`` (``tests/test_mappo.py`` checks a run's weights bit for bit). Workers start with the ``spawn``
    method (safe next to torch's threads) and cost a few seconds to start; a worker's error is raised here with
    its traceback.
    """

    def __init__(self, env_kwargs: dict[str, Any], n: int, workers: int = 0):
        if n < 1:
            raise ValueError(f"EnvCopies needs at least one copy, got n={n}")
        if workers < 0:
            raise ValueError(f"env workers must be >= 0 (0: step the copies in this process), got {workers}")
        self.n, self.workers = n, min(workers, n)
        self._local: _Copies | None = None
        self._conns: list = []
        self._procs: list = []
        if self.workers == 0:
            self._local = _Copies(env_kwargs, n)
            self.agents = self._local.agents
            return
        self._blocks = np.array_split(np.arange(n), self.workers)
        ctx = mp.get_context("spawn")
        try:
            for block in self._blocks:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, env_kwargs, len(block)), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            self.agents = [self._receive(conn) for conn in self._conns][0]  # each worker names its agents
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _receive(conn) -> Any:
        try:
            status, payload = conn.recv()
        except EOFError:
            raise RuntimeError("an env worker process died without a word (out of memory?)") from None
        if status == "error":
            raise RuntimeError(f"an env worker failed:\n{payload}")
        return payload

    def _run(self, cmd: str, block_args: Callable[[np.ndarray], tuple]) -> tuple[list, list, list]:
        """``_Copies.<cmd>`` on every copy → its three per-copy lists, in copy order. ``block_args(indices)``: the
        arguments for the copies ``indices`` (all of them in this process, one block per worker)."""
        if self._local is not None:
            return getattr(self._local, cmd)(*block_args(np.arange(self.n)))
        for conn, block in zip(self._conns, self._blocks):
            conn.send((cmd, block_args(block)))
        parts = [self._receive(conn) for conn in self._conns]
        return tuple([x for part in parts for x in part[k]] for k in range(3))

    def reset(self, seeds: list[int | None], options: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start a day on every copy (``seeds[e]`` for copy ``e``; ``None`` keeps its RNG going) →
        observations (n, agents, obs_dim), states (n, state_dim), days (n,)."""
        obs, states, days = self._run("reset", lambda b: ([seeds[i] for i in b], options))
        return np.stack(obs), np.stack(states), np.asarray(days)

    def step(self, actions: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
        """Step every copy with ``actions`` (n, agents, act_dim) → (per copy: (observations, rewards, day ended,
        infos)), states (n, state_dim) after the step, days (n,)."""
        results, states, days = self._run("step", lambda b: (actions[b],))
        return results, np.stack(states), np.asarray(days)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __enter__(self) -> "EnvCopies":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
