"""Exogenous time series: PV, wind, load (per unit) and the real-time price, one row per day × hour.

The bundled default is SMARD Luxembourg 2024 (CC BY 4.0, "Bundesnetzagentur | SMARD.de"); see
``mmgrid_env/data/README.md`` for the credit and the list of changes. Days split once, deterministically:
day index % 5 == 4 is a test day.

Every dataset is validated when it is built (bad input raises :class:`DataError` with a one-line message naming the
column, row or file and the fix): per-unit profiles in [0, 1], finite values, unique day labels, and prices in a
plausible €/MWh range (see ``PRICE_MIN_EUR_PER_MWH``, ``PRICE_MAX_EUR_PER_MWH``), which catches prices
given in €/kWh. A :class:`Dataset` holds private, read-only copies of its arrays, so one loaded dataset (the bundled
one is parsed once per process and cached) can be shared by any number of environments.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["Dataset", "load_dataset", "DataError", "BUNDLED_DATASETS", "HOURS_PER_DAY", "SPLITS", "STRESS_SPLITS", "PRICE_MIN_EUR_PER_MWH",
           "PRICE_MAX_EUR_PER_MWH", "PRICE_KWH_SUSPECT_EUR_PER_MWH"]

HOURS_PER_DAY = 24
BUNDLED_DATASETS = {"smard_lu_2024": "smard_lu_2024_hourly.csv.gz"}
REQUIRED_COLUMNS = ("day", "hour", "pv_pu", "wind_pu", "load_pu", "price_eur_per_mwh")
PU_COLUMNS = ("pv_pu", "wind_pu", "load_pu")
PU_TOLERANCE = 1e-9
"""Per-unit values up to 1 + PU_TOLERANCE (rounding in a normalisation) are accepted and stored as 1."""

# Plausible electricity prices, €/MWh. The EU day-ahead market (single day-ahead coupling) clears within
# harmonised limits of -500 €/MWh and +4000 €/MWh (+5000 €/MWh once the maximum has been raised after a price
# spike); these bounds are wider, so real market data always pass, while a unit mistake (€/kWh, €/GWh) is caught.
PRICE_MIN_EUR_PER_MWH = -1000.0
PRICE_MAX_EUR_PER_MWH = 10000.0
# A dataset whose every price is within ±1 €/MWh, but not all exactly zero, was almost surely given in €/kWh (a
# real market never stays within ±1 €/MWh for a whole dataset). All-zero prices are legitimate (free energy).
PRICE_KWH_SUSPECT_EUR_PER_MWH = 1.0
KWH_PER_MWH = 1000.0


STRESS_SPLITS = {
    "test_negative_price": "test days with at least one negative price hour",
    "test_high_price": "the fifth of the test days with the highest mean price",
    "test_price_spread": "the fifth of the test days with the largest price spread (max − min)",
    "test_high_load": "the fifth of the test days with the highest mean load",
    "test_low_renewables": "the fifth of the test days with the least PV + wind (dunkelflaute)",
}
"""Evaluation-only splits, subsets of the test days (never trained on), defined from the data."""

SPLITS = ("train", "validation", "test", "all", *STRESS_SPLITS)
"""Every split name :meth:`Dataset.split_days` knows. Train / validation / test are disjoint: test = index % 5 == 4
(unchanged since v0, so earlier test numbers stay comparable), validation = index % 10 == 1 (every season), train =
the rest."""


class DataError(ValueError):
    """A data file or array is malformed; the message names the column/row and the fix."""


def _label(day: str) -> str:
    """A day label as it appears in a one-line message (quoted if it holds line breaks or other control chars)."""
    return day if day.isprintable() else repr(day)


def _check_values(cols: dict[str, np.ndarray], days: Sequence[str], price_key: str) -> None:
    """Finite values, per-unit columns in [0, 1], plausible prices; ``price_key`` names the price column and unit.

    ``cols`` maps column names to arrays of shape ``(n_days, 24)``; ``price_key`` is ``"price_eur_per_mwh"`` or
    ``"price_eur_per_kwh"`` (then the €/MWh bounds are divided by 1000).
    """
    for key, a in cols.items():
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            d, h = bad[0]
            raise DataError(f"{key}: non-finite value {a[d, h]} at day {_label(days[d])} hour {h}; every value must be a "
                            f"finite number (fill or drop the missing hours)")
    for key in PU_COLUMNS:
        a = cols[key]
        bad = np.argwhere((a < 0) | (a > 1.0 + PU_TOLERANCE))
        if bad.size:
            d, h = bad[0]
            raise DataError(f"{key}: value {a[d, h]} at day {_label(days[d])} hour {h} is outside [0, 1] "
                            f"(profiles are per unit of capacity: divide by the installed capacity / peak)")
    per_mwh = price_key == "price_eur_per_mwh"
    scale = 1.0 if per_mwh else KWH_PER_MWH
    unit = "€/MWh" if per_mwh else "€/kWh"
    lo, hi = PRICE_MIN_EUR_PER_MWH / scale, PRICE_MAX_EUR_PER_MWH / scale
    p = cols[price_key]
    bad = np.argwhere((p < lo) | (p > hi))
    if bad.size:
        d, h = bad[0]
        raise DataError(f"{price_key}: value {p[d, h]:g} at day {_label(days[d])} hour {h} is outside the plausible range "
                        f"[{lo:g}, {hi:g}] {unit}; check the unit (prices must be in {unit})")
    suspect = PRICE_KWH_SUSPECT_EUR_PER_MWH / scale
    largest = float(np.abs(p).max())
    if 0.0 < largest < suspect:
        if per_mwh:
            raise DataError(f"price_eur_per_mwh: every value is within ±{suspect:g} €/MWh (largest |price| "
                            f"{largest:g}): this looks like €/kWh; prices must be in €/MWh (multiply by 1000)")
        raise DataError(f"price_eur_per_kwh: every value is within ±{suspect:g} €/kWh (largest |price| "
                        f"{largest:g}): this looks like a price divided by 1000 twice; price_eur_per_kwh must be "
                        f"in €/kWh (€/MWh ÷ 1000)")


def _check_days(days: tuple[str, ...]) -> None:
    first: dict[str, int] = {}
    for i, label in enumerate(days):
        if not label.strip():
            raise DataError(f"days: the label of day index {i} is empty; every day needs a label (e.g. a date)")
        if label in first:
            raise DataError(f"days: label {label!r} is used twice (day indices {first[label]} and {i}); "
                            f"every day needs a unique label")
        first[label] = i


class _ReadOnlyDict(dict):
    """A dict that refuses changes (a dataset's profiles) and still pickles."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a dataset's profiles are read-only; build a new Dataset to change them")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return (_ReadOnlyDict, (dict(self),))


@dataclass(frozen=True)
class Dataset:
    """Per-unit profiles and prices, shape ``(n_days, 24)`` each.

    Attributes:
        days: calendar label of each day (e.g. ``"2024-01-01"``), non-empty and unique.
        pv_pu, wind_pu, load_pu: per unit of the installed capacity / load peak, in [0, 1] (values up to
            1 + 1e-9, rounding noise, are stored as 1).
        price_eur_per_kwh: real-time price c_t (€/kWh), may be negative.
        name: where the data came from.

    Validation (on construction, directly or through :meth:`from_arrays` / :func:`load_dataset`; a violation raises
    :class:`DataError` naming the column, day and hour):

    - every value finite; per-unit columns in [0, 1]; ``days`` has one non-empty, unique label per day;
    - prices plausible: within [-1000, 10000] €/MWh (``PRICE_MIN_EUR_PER_MWH``,
      ``PRICE_MAX_EUR_PER_MWH``, wider than the EU day-ahead market's clearing limits), i.e. [-1, 10] €/kWh;
    - prices not in €/kWh by mistake: if every |price| is below 1 €/MWh (0.001 €/kWh) while some price is non-zero,
      the data are rejected as €/kWh given where €/MWh is expected. All-zero prices are accepted.

    The arrays are private float64 copies (C order) and read-only: changing the caller's arrays after construction
    does not change the dataset, and writing into ``dataset.pv_pu`` etc. raises ``ValueError``. Use
    ``dataclasses.replace(ds, price_eur_per_kwh=...)`` (validated again) or copy an array (``ds.pv_pu.copy()``) to
    derive modified data.
    """

    days: tuple[str, ...]
    pv_pu: np.ndarray
    wind_pu: np.ndarray
    load_pu: np.ndarray
    price_eur_per_kwh: np.ndarray
    name: str = "custom"
    profiles: Mapping[str, np.ndarray] | None = None
    """More per-unit columns (name → (n_days, 24)), e.g. the SimBench load shapes of the bundled data: a microgrid
    picks its own with ``MicrogridConfig.load_profile`` / ``pv_profile`` / ``wind_profile``."""

    def __post_init__(self) -> None:
        if isinstance(self.days, (str, bytes)):
            raise DataError(f"days: expected a sequence of day labels, got a single string {self.days!r}")
        try:
            days = tuple(str(d) for d in self.days)
        except TypeError:
            raise DataError(f"days: expected a sequence of day labels, got {type(self.days).__name__}") from None
        object.__setattr__(self, "days", days)
        object.__setattr__(self, "name", str(self.name))
        for key in (*PU_COLUMNS, "price_eur_per_kwh"):
            a = _as_float_array(getattr(self, key), key)
            if a.ndim != 2 or a.shape[1] != HOURS_PER_DAY:
                raise DataError(f"{key}: expected shape (n_days, 24), got {a.shape}")
            if a.shape[0] != len(days):
                raise DataError(f"{key}: {a.shape[0]} days of data for {len(days)} day labels; give one label per "
                                f"day")
            object.__setattr__(self, key, a)
        self.validate()
        for key in PU_COLUMNS:  # rounding noise above 1 → 1 (validate allowed up to 1 + PU_TOLERANCE)
            np.minimum(getattr(self, key), 1.0, out=getattr(self, key))
        for key in (*PU_COLUMNS, "price_eur_per_kwh"):
            getattr(self, key).setflags(write=False)
        profiles = {}
        for key, arr in dict(self.profiles or {}).items():
            key = str(key)
            if key in (*PU_COLUMNS, "price_eur_per_kwh"):
                raise DataError(f"profiles: {key!r} is a main column of the dataset; give the profile another name")
            a = _as_float_array(arr, key)
            if a.shape != (len(days), HOURS_PER_DAY):
                raise DataError(f"profiles[{key!r}]: expected shape ({len(days)}, 24), got {a.shape}")
            bad = np.argwhere(~np.isfinite(a) | (a < 0) | (a > 1.0 + PU_TOLERANCE))
            if bad.size:
                d, h = bad[0]
                raise DataError(f"profiles[{key!r}]: value {a[d, h]} at day {_label(days[d])} hour {h} is not in [0, 1] "
                                f"(profiles are per unit of their peak)")
            a = np.minimum(a, 1.0)
            a.setflags(write=False)
            profiles[key] = a
        object.__setattr__(self, "profiles", _ReadOnlyDict(profiles))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every per-unit column a microgrid can use: ``pv_pu``, ``wind_pu``, ``load_pu`` and the profiles."""
        return (*PU_COLUMNS, *self.profiles)

    def column(self, name: str) -> np.ndarray:
        """A per-unit column by name, shape (n_days, 24) (read-only)."""
        if name in PU_COLUMNS:
            return getattr(self, name)
        if name in self.profiles:
            return self.profiles[name]
        raise DataError(f"unknown column {name!r}; this dataset has {list(self.columns)}")

    def __setstate__(self, state: dict) -> None:
        """Unpickling / deep copies: restore the fields, then copy, validate and freeze the arrays as on init."""
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def n_days(self) -> int:
        return len(self.days)

    @property
    def test_days(self) -> np.ndarray:
        """Indices of the test days (every 5th: index % 5 == 4), scored once, at the end."""
        return self.split_days("test")

    @property
    def validation_days(self) -> np.ndarray:
        """Indices of the validation days (index % 10 == 1: every season), where defaults are chosen."""
        return self.split_days("validation")

    @property
    def train_days(self) -> np.ndarray:
        """Indices of the training days (neither test nor validation)."""
        return self.split_days("train")

    def split_days(self, split: str) -> np.ndarray:
        """Day indices of a split: ``"train"``, ``"validation"``, ``"test"``, ``"all"`` or a stress split
        (:data:`STRESS_SPLITS`: subsets of the test days, defined from the data)."""
        idx = np.arange(self.n_days)
        if split == "test":
            return idx[idx % 5 == 4]
        if split == "validation":
            return idx[(idx % 10 == 1)]
        if split == "train":
            return idx[(idx % 5 != 4) & (idx % 10 != 1)]
        if split == "all":
            return idx
        if split in STRESS_SPLITS:
            return self._stress_days(split)
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")

    def _stress_days(self, split: str) -> np.ndarray:
        """The test days ranked by the split's statistic; the worst fifth (at least one day), or, for
        ``test_negative_price``, every test day with a negative price."""
        test = self.split_days("test")
        price = self.price_eur_per_kwh[test]
        if split == "test_negative_price":
            return test[np.any(price < 0.0, axis=1)]
        stat = {"test_high_price": price.mean(axis=1),
                "test_price_spread": price.max(axis=1) - price.min(axis=1),
                "test_high_load": self.load_pu[test].mean(axis=1),
                "test_low_renewables": -(self.pv_pu[test] + self.wind_pu[test]).mean(axis=1)}[split]
        k = max(1, int(math.ceil(len(test) / 5)))
        worst = np.argsort(-stat, kind="stable")[:k]  # ties: the earlier day first
        return np.sort(test[worst])

    @classmethod
    def from_arrays(cls, pv_pu: Sequence, wind_pu: Sequence, load_pu: Sequence, price_eur_per_mwh: Sequence,
                    days: Sequence[str] | None = None, name: str = "arrays") -> "Dataset":
        """Build a dataset from hourly arrays of length 24·n_days (or shape ``(n_days, 24)``).

        Prices are given in €/MWh, as markets publish them, and stored in €/kWh; they must lie in
        [-1000, 10000] €/MWh, and prices that are all within ±1 €/MWh (but not all zero) are rejected as €/kWh.
        The arrays are copied (later changes to the caller's arrays do not reach the dataset); see :class:`Dataset`
        for all validation rules. Raises :class:`DataError` naming the column on bad input.
        """
        cols = {}
        for key, arr in (("pv_pu", pv_pu), ("wind_pu", wind_pu), ("load_pu", load_pu),
                         ("price_eur_per_mwh", price_eur_per_mwh)):
            a = _as_float_array(arr, key)
            if a.ndim == 1:
                if a.size == 0 or a.size % HOURS_PER_DAY:
                    raise DataError(f"{key}: length {a.size} is not a positive multiple of 24 hours "
                                    f"(give whole days)")
                a = a.reshape(-1, HOURS_PER_DAY)
            if a.ndim != 2 or a.shape[1] != HOURS_PER_DAY or a.shape[0] == 0:
                raise DataError(f"{key}: expected shape (n_days, 24) or (24*n_days,) with n_days ≥ 1, got {a.shape}")
            cols[key] = a
        shapes = {k: v.shape for k, v in cols.items()}
        if len(set(shapes.values())) != 1:
            raise DataError(f"arrays disagree in shape: {shapes}; give every column the same number of days")
        n_days = cols["pv_pu"].shape[0]
        if days is None:
            days = tuple(f"day{d:03d}" for d in range(n_days))
        if isinstance(days, (str, bytes)):
            raise DataError(f"days: expected a sequence of day labels, got a single string {days!r}")
        try:
            days = tuple(str(d) for d in days)
        except TypeError:
            raise DataError(f"days: expected a sequence of day labels, got {type(days).__name__}") from None
        if len(days) != n_days:
            raise DataError(f"days has {len(days)} labels for {n_days} days; give one label per day")
        _check_days(days)
        _check_values(cols, days, "price_eur_per_mwh")
        return cls(days=days, pv_pu=cols["pv_pu"], wind_pu=cols["wind_pu"], load_pu=cols["load_pu"],
                   price_eur_per_kwh=cols["price_eur_per_mwh"] / KWH_PER_MWH, name=name)

    def validate(self) -> None:
        """Check labels, finiteness, per-unit ranges and price plausibility; raise :class:`DataError` if violated."""
        _check_days(self.days)
        _check_values({k: getattr(self, k) for k in (*PU_COLUMNS, "price_eur_per_kwh")}, self.days,
                      "price_eur_per_kwh")


def _as_float_array(arr, key: str) -> np.ndarray:
    """``arr`` as a private float64 copy in C order; DataError naming ``key`` if it is not numeric."""
    if isinstance(arr, (str, bytes)):
        raise DataError(f"{key}: expected an array of numbers, got a string")
    try:
        a = np.array(arr, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError, OverflowError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{key}: expected an array of numbers ({msg})") from None
    return a


def _csv_rows(text: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV record; csv.Error becomes DataError naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{source}, row {reader.line_num}: unreadable CSV ({e})") from None
        yield reader.line_num, row


def _parse_hour(raw: str, source: str, row_no: int) -> int:
    """The ``hour`` cell as an int; whole numbers written as floats ("3.0") are accepted, "3.7" is an error."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        x = float(raw)
    except ValueError:
        raise DataError(f"{source}, row {row_no}, column 'hour': not an integer: {raw!r} (hours are 0..23)") from None
    if not math.isfinite(x) or x != math.floor(x):
        raise DataError(f"{source}, row {row_no}, column 'hour': {raw.strip()!r} is not a whole hour "
                        f"(hours are integers 0..23)")
    return int(x)


def _parse_csv(text: str, source: str) -> Dataset:
    rows = _csv_rows(text, source)
    header: list[str] = []
    for _, first in rows:  # the first non-blank line is the header
        header = [h.strip() for h in first]
        if any(header):
            break
    if not any(header):
        raise DataError(f"{source}: empty file; expected a header line {','.join(REQUIRED_COLUMNS)} and 24 rows "
                        f"per day")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    twice = [c for c in REQUIRED_COLUMNS if header.count(c) > 1]
    if twice:
        raise DataError(f"{source}: column(s) {twice} appear more than once in the header; keep one of each")
    idx = {c: header.index(c) for c in REQUIRED_COLUMNS}
    days: list[str] = []
    day_row: dict[str, int] = {}
    values: dict[str, list[float]] = {c: [] for c in REQUIRED_COLUMNS[2:]}
    for row_no, row in rows:
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{source}, row {row_no}: {len(row)} fields, header has {len(header)} "
                            f"(every row needs one value per header column)")
        hour = _parse_hour(row[idx["hour"]], source, row_no)
        expected_hour = len(values["pv_pu"]) % HOURS_PER_DAY
        if hour != expected_hour:
            raise DataError(f"{source}, row {row_no}, column 'hour': expected hour {expected_hour}, got {hour} "
                            f"(each day needs 24 consecutive rows, hours 0..23)")
        day = row[idx["day"]].strip()
        if hour == 0:
            if not day:
                raise DataError(f"{source}, row {row_no}, column 'day': empty day label; every day needs a label "
                                f"(e.g. a date)")
            if day in day_row:
                raise DataError(f"{source}, row {row_no}, column 'day': day {day!r} already started at row "
                                f"{day_row[day]}; every day needs a unique label")
            days.append(day)
            day_row[day] = row_no
        elif day != days[-1]:
            raise DataError(f"{source}, row {row_no}, column 'day': {day!r} inside day {days[-1]!r} "
                            f"(the 24 rows of a day share one label)")
        parsed = {}
        for c in values:
            raw = row[idx[c]]
            try:
                x = float(raw)
            except ValueError:
                raise DataError(f"{source}, row {row_no}, column {c!r}: not a number: {raw!r}") from None
            if not math.isfinite(x):
                raise DataError(f"{source}, row {row_no}, column {c!r}: non-finite value {raw!r}; every value "
                                f"must be a finite number")
            parsed[c] = x
        for c, x in parsed.items():
            values[c].append(x)
    n = len(values["pv_pu"])
    if n == 0:
        raise DataError(f"{source}: no data rows after the header; expected 24 rows per day")
    if n % HOURS_PER_DAY:
        raise DataError(f"{source}: {n} data rows is not a positive multiple of 24 (whole days only: the last day "
                        f"{days[-1]!r} has {n % HOURS_PER_DAY} rows)")
    try:
        return Dataset.from_arrays(values["pv_pu"], values["wind_pu"], values["load_pu"],
                                   values["price_eur_per_mwh"], days=days, name=source)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None


def _decode(raw: bytes, source: str, compressed: bool) -> str:
    """Bytes of a CSV (gzip-compressed if ``compressed``) → text; UTF-8 with an optional BOM."""
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{source}: not a valid gzip file ({type(e).__name__}: {e}); re-download or "
                            f"re-compress it") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text ({e}); save the file as UTF-8") from None


_CACHE: dict[str, Dataset] = {}


def load_dataset(source: "str | os.PathLike | Dataset" = "smard_lu_2024") -> Dataset:
    """Load a bundled dataset by name, a CSV file (optionally ``.gz``) by path, or pass a Dataset through.

    The CSV needs the columns ``day, hour, pv_pu, wind_pu, load_pu, price_eur_per_mwh`` (others are ignored, any
    order), UTF-8 (a byte-order mark is fine), 24 rows per day in hour order (``hour`` 0..23; "3.0" reads as 3),
    one unique ``day`` label per day; prices in €/MWh (see :class:`Dataset` for the validation rules). A file
    starting with the gzip magic bytes is decompressed whatever its name. Bad input raises :class:`DataError`
    naming the file, row and column.

    Datasets are immutable (read-only arrays), so the bundled one is parsed once per process and the same object
    is returned to every caller.
    """
    if isinstance(source, Dataset):
        return source
    try:
        key = os.fspath(source)
    except TypeError:
        raise DataError(f"dataset must be a bundled dataset name {sorted(BUNDLED_DATASETS)}, a CSV path or a "
                        f"Dataset, got {type(source).__name__}") from None
    if isinstance(key, bytes):
        key = os.fsdecode(key)
    if key in BUNDLED_DATASETS:
        if key not in _CACHE:  # bundled files never change: parse once per process
            raw = resources.files("mmgrid_env").joinpath("data", BUNDLED_DATASETS[key]).read_bytes()
            ds = _parse_csv(_decode(raw, key, compressed=True), key)
            _CACHE[key] = dataclasses.replace(ds, profiles=_simbench_profiles(ds))
        return _CACHE[key]
    if not os.path.exists(key):
        raise DataError(f"dataset {key!r} is neither a bundled dataset {sorted(BUNDLED_DATASETS)} "
                        f"nor an existing file")
    try:
        with open(key, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{key}: cannot read the file ({e.strerror or e}); give a readable CSV file") from None
    compressed = key.endswith(".gz") or raw[:2] == b"\x1f\x8b"
    return _parse_csv(_decode(raw, key, compressed), key)


SIMBENCH_FILE = "simbench_2016_hourly_profiles.csv.gz"
SIMBENCH_COLUMNS = {
    "simbench_H0_load_pu": "H0_A_p_pu", "simbench_G0_load_pu": "G0_A_p_pu", "simbench_G1_load_pu": "G1_A_p_pu",
    "simbench_L0_load_pu": "L0_A_p_pu", "simbench_pv3_pu": "pv3_pu", "simbench_pv5_pu": "pv5_pu",
    "simbench_wp4_pu": "wp4_pu", "simbench_wp7_pu": "wp7_pu",
}
"""The SimBench profiles the bundled dataset carries (name → SimBench column): household (H0), commercial (G0, G1:
weekdays 8–18 h), agricultural (L0) loads, two PV and two wind profiles; each divided by its annual maximum (per
unit of the peak, like the SMARD columns). ODbL 1.0, "SimBench, © University of Kassel, TU Dortmund, RWTH Aachen,
Fraunhofer IEE"; see ``mmgrid_env/data/README.md``."""
SIMBENCH_DAY_OFFSET = 3
"""2024 day d uses SimBench's 2016 day (d + 3) mod 366: 2024-01-01 and 2016-01-04 are both Mondays, so weekday
shapes (commercial loads) stay on weekdays (but for the last three days of the year, which wrap around)."""


def _simbench_profiles(ds: Dataset) -> dict[str, np.ndarray]:
    """The SimBench columns for the bundled 366-day dataset (weekday-aligned, normalised to their maximum)."""
    raw = resources.files("mmgrid_env").joinpath("data", SIMBENCH_FILE).read_bytes()
    text = _decode(raw, SIMBENCH_FILE, compressed=True)
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    if len(body) != ds.n_days * HOURS_PER_DAY:
        raise DataError(f"{SIMBENCH_FILE}: {len(body)} rows, expected {ds.n_days * HOURS_PER_DAY}")
    out = {}
    for name, src in SIMBENCH_COLUMNS.items():
        j = header.index(src)
        a = np.array([float(r[j]) for r in body]).reshape(ds.n_days, HOURS_PER_DAY)
        a = np.roll(a, -SIMBENCH_DAY_OFFSET, axis=0) / a.max()
        out[name] = a
    return out
