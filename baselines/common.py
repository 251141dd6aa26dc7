"""What the learners share: checkpoint integrity (one error type, zip CRCs and a SHA-256 of the weights) and the
CSV log of a training run. Plain helpers; each learner stays one readable file."""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from typing import Any

import torch

__all__ = ["CheckpointError", "state_dict_sha256", "save_payload", "load_payload", "first_line", "CsvLog"]


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
