"""Property-based tests of the dataset layer: any input is either a valid, read-only Dataset or a DataError."""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmgrid_env import Dataset, DataError, load_dataset
from mmgrid_env.data import PRICE_MAX_EUR_PER_MWH, PRICE_MIN_EUR_PER_MWH

PU_KEYS = ("pv_pu", "wind_pu", "load_pu")
ARRAY_KEYS = (*PU_KEYS, "price_eur_per_mwh")
COLUMN_NAMES = (*ARRAY_KEYS, "days")
REQUIRED = ("day", "hour", "pv_pu", "wind_pu", "load_pu", "price_eur_per_mwh")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_valid(ds: Dataset) -> None:
    """Every invariant a Dataset promises."""
    assert isinstance(ds, Dataset) and ds.n_days >= 1
    assert len(set(ds.days)) == ds.n_days and all(label.strip() for label in ds.days)
    for key in (*PU_KEYS, "price_eur_per_kwh"):
        a = getattr(ds, key)
        assert a.shape == (ds.n_days, 24) and a.dtype == np.float64
        assert np.isfinite(a).all()
        assert not a.flags.writeable
    for key in PU_KEYS:
        a = getattr(ds, key)
        assert a.min() >= 0.0 and a.max() <= 1.0
    p = ds.price_eur_per_kwh
    assert p.min() >= PRICE_MIN_EUR_PER_MWH / 1000 and p.max() <= PRICE_MAX_EUR_PER_MWH / 1000
    assert not p.any() or np.abs(p).max() >= 1.0 / 1000  # never all within ±1 €/MWh unless all zero


# ---------------------------------------------------------------- (a) arrays

finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)
mostly_per_unit = st.one_of(st.floats(0.0, 1.0), st.floats(-0.2, 1.2), finite_or_not)


@st.composite
def column(draw, n_days: int, elements, scale: float = 1.0):
    """One column: usually the right number of hours, flat or (n_days, 24); sometimes a wrong shape."""
    shape = draw(st.sampled_from(["flat", "2d", "2d", "flat", "wrong"]))
    if shape == "wrong":
        shape_t = draw(st.sampled_from([(24 * n_days + 1,), (n_days, 23), (0,), (n_days, 24, 1), ()]))
    elif shape == "flat":
        shape_t = (24 * n_days,)
    else:
        shape_t = (n_days, 24)
    fill = draw(st.booleans())  # a constant column, or random values
    if fill:
        a = np.full(shape_t, draw(elements), dtype=np.float64)
    else:
        a = draw(hnp.arrays(np.float64, shape_t, elements=elements))
    with np.errstate(over="ignore", invalid="ignore"):
        return a * scale


@st.composite
def array_inputs(draw):
    n_days = draw(st.integers(1, 3))
    cols = {k: draw(column(n_days, draw(st.sampled_from([st.floats(0.0, 1.0), mostly_per_unit]))))
            for k in PU_KEYS}
    price_scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e6, 0.0]))  # €/MWh, €/kWh by mistake, €/GWh, ...
    price_elems = draw(st.sampled_from([st.floats(-500.0, 4000.0), st.floats(-1.0, 1.0), finite_or_not]))
    cols["price_eur_per_mwh"] = draw(column(n_days, price_elems, price_scale))
    days = draw(st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c", "2024-01-01", " "]),
                                               min_size=n_days - 1, max_size=n_days + 1)))
    return cols, days


@SETTINGS
@given(array_inputs())
def test_from_arrays_accepts_valid_data_or_names_the_column(inputs):
    cols, days = inputs
    originals = {k: v.copy() for k, v in cols.items()}
    try:
        ds = Dataset.from_arrays(**cols, days=days)
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg
        assert any(name in msg for name in COLUMN_NAMES), msg
        event("rejected")
        return
    event("accepted")
    assert_valid(ds)
    # the stored numbers are the given ones (per unit: rounding noise above 1 stored as 1; price ÷ 1000)
    for k in PU_KEYS:
        assert np.array_equal(ds.__getattribute__(k), np.minimum(originals[k].reshape(-1, 24), 1.0))
    assert np.array_equal(ds.price_eur_per_kwh, originals["price_eur_per_mwh"].reshape(-1, 24) / 1000.0)
    # the caller's arrays are not shared
    for v in cols.values():
        v[...] = 0.123
    assert np.array_equal(ds.price_eur_per_kwh, originals["price_eur_per_mwh"].reshape(-1, 24) / 1000.0)
    with pytest.raises(ValueError):
        ds.pv_pu[0, 0] = 0.5


@SETTINGS
@given(st.integers(1, 3).flatmap(lambda n: hnp.arrays(np.float64, 24 * n, elements=st.floats(-150.0, 900.0))))
def test_prices_given_in_eur_per_kwh_are_always_rejected(prices_eur_per_mwh):
    assume(np.abs(prices_eur_per_mwh).max() >= 1.0)  # a real market: not every hour within ±1 €/MWh
    ones = np.full(prices_eur_per_mwh.size, 0.5)
    Dataset.from_arrays(ones, ones, ones, prices_eur_per_mwh)  # right unit: accepted
    with pytest.raises(DataError, match=r"^price_eur_per_mwh: every value is within ±1 €/MWh.*looks like €/kWh"):
        Dataset.from_arrays(ones, ones, ones, prices_eur_per_mwh / 1000.0)  # €/kWh by mistake


# ---------------------------------------------------------------- (b) CSV files

cell_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)


@st.composite
def csv_file(draw):
    """(file bytes, suffix, expected or None): a valid table, then maybe mutated; expected only if still valid."""
    n_days = draw(st.integers(1, 3))
    extras = draw(st.lists(st.sampled_from(["note", "load_mw", "timestamp_utc", "x"]), unique=True, max_size=2))
    header = list(draw(st.permutations([*REQUIRED, *extras])))
    price_scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-3]))
    rnd = draw(st.randoms(use_true_random=False))
    hours = 24 * n_days
    unit = st.floats(0.0, 1.0).map(lambda x: round(x, 4))
    expected = {"pv_pu": draw(st.lists(unit, min_size=hours, max_size=hours)),
                "wind_pu": draw(st.lists(unit, min_size=hours, max_size=hours)),
                "load_pu": draw(st.lists(unit, min_size=hours, max_size=hours)),
                "price_eur_per_mwh": draw(st.lists(st.floats(-500.0, 4000.0).map(lambda x: round(x, 2)),
                                                   min_size=hours, max_size=hours))}
    expected["price_eur_per_mwh"][draw(st.integers(0, hours - 1))] = draw(st.floats(1.0, 300.0))  # a real market
    expected["price_eur_per_mwh"] = [x * price_scale for x in expected["price_eur_per_mwh"]]
    table = []
    for d in range(n_days):
        for h in range(24):
            vals = {"day": f"2030-02-{d + 1:02d}", "hour": str(h), **{k: v[24 * d + h] for k, v in expected.items()}}
            table.append([repr(vals[c]) if isinstance(vals.get(c), float) else str(vals.get(c, f"{c}-{d}-{h}"))
                          for c in header])
    benign = price_scale == 1.0  # prices in €/kWh must be rejected
    mutations = draw(st.lists(st.sampled_from(
        ["drop_field", "extra_field", "non_numeric", "wrong_hour", "float_hour", "fractional_hour", "nan", "inf",
         "drop_row", "swap_rows", "dup_day", "day_change", "blank_lines", "out_of_range", "empty_cell", "crlf",
         "quote_cell"]), max_size=3))
    for m in mutations:
        r = rnd.randrange(len(table))
        row = table[r]
        col = lambda name: header.index(name)  # noqa: E731
        numeric = [header.index(c) for c in REQUIRED[2:]]
        if len(row) != len(header) and m not in ("drop_row", "swap_rows", "blank_lines", "crlf", "extra_field"):
            continue  # an earlier mutation already broke this row's fields: nothing left to index
        if m == "drop_field":
            del row[rnd.randrange(len(row))]
        elif m == "extra_field":
            row.append("1")
        elif m == "non_numeric":
            row[rnd.choice(numeric)] = draw(cell_text)
        elif m == "wrong_hour":
            row[col("hour")] = str(rnd.choice([-1, 24, 25, int(row[col("hour")]) + 1]))
        elif m == "float_hour":  # "3.0" reads as 3: still valid
            row[col("hour")] = row[col("hour")] + ".0"
            continue
        elif m == "fractional_hour":
            row[col("hour")] = row[col("hour")] + ".5"
        elif m in ("nan", "inf"):
            row[rnd.choice(numeric)] = rnd.choice([m, "-" + m, m.upper()])
        elif m == "drop_row":
            del table[r]
        elif m == "swap_rows" and len(table) > 1:
            s = rnd.randrange(len(table) - 1)
            table[s], table[s + 1] = table[s + 1], table[s]
        elif m == "dup_day" and n_days > 1:
            first = next((r0 for r0 in table if len(r0) == len(header)), None)
            if first is None:
                continue
            for row2 in table[24:48]:
                if len(row2) == len(header):  # earlier mutations may have broken or blanked rows
                    row2[col("day")] = first[col("day")]
        elif m == "day_change":
            row[col("day")] = "1999-12-31"
        elif m == "blank_lines":  # blank lines are skipped: still valid
            table.insert(r, [])
            continue
        elif m == "out_of_range":
            row[rnd.choice(numeric)] = str(rnd.choice([-0.5, 1.5, 1e9, -5000.0]))
        elif m == "empty_cell":
            row[rnd.choice(numeric + [col("day")])] = ""
        elif m == "crlf":  # line endings do not matter: still valid
            continue
        elif m == "quote_cell":  # a quoted cell reads the same: still valid
            continue
        benign = False
    out = io.StringIO()
    lineterminator = "\r\n" if "crlf" in mutations else "\n"
    quoting = csv.QUOTE_ALL if "quote_cell" in mutations else csv.QUOTE_MINIMAL
    w = csv.writer(out, lineterminator=lineterminator, quoting=quoting)
    w.writerow(header)
    w.writerows(table)
    data = out.getvalue().encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # a byte-order mark, as spreadsheet programs write it
    suffix = ".csv"
    packing = draw(st.sampled_from(["plain", "plain", "gz", "truncated_gz", "garbage"]))
    if packing == "gz":
        data, suffix = gzip.compress(data), ".csv.gz"
    elif packing == "truncated_gz":
        data, suffix = gzip.compress(data)[: rnd.randrange(1, 30)], ".csv.gz"
        benign = False
    elif packing == "garbage":
        data = draw(st.binary(max_size=64))
        benign = False
    return data, suffix, (expected if benign else None)


@SETTINGS
@given(csv_file())
def test_load_dataset_returns_valid_data_or_raises_data_error(case):
    data, suffix, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        try:
            ds = load_dataset(path)
        except DataError as e:
            assert "\n" not in str(e) and "data.csv" in str(e), str(e)
            assert expected is None, f"a valid file was rejected: {e}"
            event("rejected")
            return
    event("accepted, checked against the table" if expected is not None else "accepted")
    assert_valid(ds)
    if expected is not None:
        for k in ("pv_pu", "wind_pu", "load_pu"):
            assert np.array_equal(getattr(ds, k).reshape(-1), np.array(expected[k]))
        assert np.array_equal(ds.price_eur_per_kwh.reshape(-1), np.array(expected["price_eur_per_mwh"]) / 1000.0)
