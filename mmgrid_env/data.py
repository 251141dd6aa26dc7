"""Exogenous time series: PV, wind, load (per unit) and the real-time price, one row per day × hour.

The bundled default is SMARD Luxembourg 2024 (CC BY 4.0, "Bundesnetzagentur | SMARD.de"); see
``mmgrid_env/data/README.md`` for the credit and the list of changes. Days split once, deterministically:
day index % 5 == 4 is a test day (SPEC §1).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np

__all__ = ["Dataset", "load_dataset", "DataError", "BUNDLED_DATASETS", "HOURS_PER_DAY"]

HOURS_PER_DAY = 24
BUNDLED_DATASETS = {"smard_lu_2024": "smard_lu_2024_hourly.csv.gz"}
REQUIRED_COLUMNS = ("day", "hour", "pv_pu", "wind_pu", "load_pu", "price_eur_per_mwh")


class DataError(ValueError):
    """A data file or array is malformed; the message names the column/row."""


@dataclass(frozen=True)
class Dataset:
    """Per-unit profiles and prices, shape ``(n_days, 24)`` each.

    Attributes:
        days: calendar label of each day (e.g. ``"2024-01-01"``).
        pv_pu, wind_pu, load_pu: per-unit of the installed capacity / load peak, in [0, 1] (load > 0).
        price_eur_per_kwh: real-time price c_t (€/kWh), may be negative.
        name: where the data came from.
    """

    days: tuple[str, ...]
    pv_pu: np.ndarray
    wind_pu: np.ndarray
    load_pu: np.ndarray
    price_eur_per_kwh: np.ndarray
    name: str = "custom"

    @property
    def n_days(self) -> int:
        return len(self.days)

    @property
    def test_days(self) -> np.ndarray:
        """Indices of the test days (every 5th: index % 5 == 4)."""
        return np.arange(self.n_days)[np.arange(self.n_days) % 5 == 4]

    @property
    def train_days(self) -> np.ndarray:
        """Indices of the training days (all the others)."""
        return np.arange(self.n_days)[np.arange(self.n_days) % 5 != 4]

    def split_days(self, split: str) -> np.ndarray:
        if split == "train":
            return self.train_days
        if split == "test":
            return self.test_days
        if split == "all":
            return np.arange(self.n_days)
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")

    @classmethod
    def from_arrays(cls, pv_pu: Sequence, wind_pu: Sequence, load_pu: Sequence, price_eur_per_mwh: Sequence,
                    days: Sequence[str] | None = None, name: str = "arrays") -> "Dataset":
        """Build a dataset from hourly arrays of length 24·n_days (or shape ``(n_days, 24)``).

        Prices are given in €/MWh, as markets publish them, and stored in €/kWh.
        """
        cols = {}
        for key, arr in (("pv_pu", pv_pu), ("wind_pu", wind_pu), ("load_pu", load_pu),
                         ("price_eur_per_mwh", price_eur_per_mwh)):
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim == 1:
                if a.size == 0 or a.size % HOURS_PER_DAY:
                    raise DataError(f"{key}: length {a.size} is not a positive multiple of 24 hours")
                a = a.reshape(-1, HOURS_PER_DAY)
            if a.ndim != 2 or a.shape[1] != HOURS_PER_DAY:
                raise DataError(f"{key}: expected shape (n_days, 24) or (24*n_days,), got {a.shape}")
            cols[key] = a
        shapes = {k: v.shape for k, v in cols.items()}
        if len(set(shapes.values())) != 1:
            raise DataError(f"arrays disagree in shape: {shapes}")
        n_days = cols["pv_pu"].shape[0]
        if days is None:
            days = tuple(f"day{d:03d}" for d in range(n_days))
        days = tuple(str(d) for d in days)
        if len(days) != n_days:
            raise DataError(f"days has {len(days)} labels for {n_days} days")
        ds = cls(days=days, pv_pu=cols["pv_pu"], wind_pu=cols["wind_pu"], load_pu=cols["load_pu"],
                 price_eur_per_kwh=cols["price_eur_per_mwh"] / 1000.0, name=name)
        ds.validate()
        return ds

    def validate(self) -> None:
        for key in ("pv_pu", "wind_pu", "load_pu", "price_eur_per_kwh"):
            a = getattr(self, key)
            bad = np.argwhere(~np.isfinite(a))
            if bad.size:
                d, h = bad[0]
                raise DataError(f"{key}: non-finite value at day {self.days[d]} hour {h}")
        for key in ("pv_pu", "wind_pu", "load_pu"):
            a = getattr(self, key)
            bad = np.argwhere((a < 0) | (a > 1.0 + 1e-9))
            if bad.size:
                d, h = bad[0]
                raise DataError(f"{key}: value {a[d, h]} at day {self.days[d]} hour {h} is outside [0, 1] "
                                f"(profiles are per unit of capacity)")


def _parse_csv(text: str, source: str) -> Dataset:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{source}: empty file") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    idx = {c: header.index(c) for c in REQUIRED_COLUMNS}
    days: list[str] = []
    values = {c: [] for c in REQUIRED_COLUMNS[2:]}
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{source}, row {row_no}: {len(row)} fields, header has {len(header)}")
        try:
            hour = int(row[idx["hour"]])
        except ValueError:
            raise DataError(f"{source}, row {row_no}, column 'hour': not an integer: {row[idx['hour']]!r}") from None
        n_rows = sum(len(v) for v in values.values()) // len(values)
        expected_hour = n_rows % HOURS_PER_DAY
        if hour != expected_hour:
            raise DataError(f"{source}, row {row_no}, column 'hour': expected hour {expected_hour}, got {hour} "
                            f"(each day needs 24 consecutive rows, hours 0..23)")
        day = row[idx["day"]].strip()
        if hour == 0:
            days.append(day)
        elif day != days[-1]:
            raise DataError(f"{source}, row {row_no}, column 'day': {day!r} inside day {days[-1]!r}")
        for c in values:
            raw = row[idx[c]]
            try:
                x = float(raw)
            except ValueError:
                raise DataError(f"{source}, row {row_no}, column {c!r}: not a number: {raw!r}") from None
            if not math.isfinite(x):
                raise DataError(f"{source}, row {row_no}, column {c!r}: non-finite value {raw!r}")
            values[c].append(x)
    n = len(values["pv_pu"])
    if n == 0 or n % HOURS_PER_DAY:
        raise DataError(f"{source}: {n} data rows is not a positive multiple of 24 (whole days only)")
    return Dataset.from_arrays(values["pv_pu"], values["wind_pu"], values["load_pu"],
                               values["price_eur_per_mwh"], days=days, name=source)


_CACHE: dict[str, Dataset] = {}


def load_dataset(source: "str | os.PathLike | Dataset" = "smard_lu_2024") -> Dataset:
    """Load a bundled dataset by name, a CSV file (optionally ``.gz``) by path, or pass a Dataset through.

    The CSV needs the columns ``day, hour, pv_pu, wind_pu, load_pu, price_eur_per_mwh`` (others are ignored),
    24 rows per day in hour order.
    """
    if isinstance(source, Dataset):
        return source
    key = os.fspath(source)
    if key in BUNDLED_DATASETS:
        if key not in _CACHE:  # bundled files never change: parse once per process
            raw = resources.files("mmgrid_env").joinpath("data", BUNDLED_DATASETS[key]).read_bytes()
            _CACHE[key] = _parse_csv(gzip.decompress(raw).decode("utf-8"), key)
        return _CACHE[key]
    else:
        if not os.path.exists(key):
            raise DataError(f"dataset {key!r} is neither a bundled dataset {sorted(BUNDLED_DATASETS)} "
                            f"nor an existing file")
        with open(key, "rb") as f:
            raw = f.read()
        if key.endswith(".gz"):
            raw = gzip.decompress(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{key}: not UTF-8 text ({e})") from None
        return _parse_csv(text, key)
