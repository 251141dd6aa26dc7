"""The bundled dataset, custom CSVs and arrays, and clear errors for malformed data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mmgrid_env import Dataset, DataError, load_dataset, parallel_env

HEADER = "day,hour,pv_pu,wind_pu,load_pu,price_eur_per_mwh"


def csv_text(n_days=2, price=50.0):
    rows = [HEADER]
    for d in range(n_days):
        for h in range(24):
            rows.append(f"2030-01-0{d + 1},{h},{max(0.0, np.sin((h - 6) / 12 * np.pi)):.4f},0.3,0.6,{price + h}")
    return "\n".join(rows) + "\n"


def write_csv(tmp_path, name, lines):
    """A data file made of ``lines`` (a damaged copy of :func:`csv_text`), for the malformed-file tests."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bundled_dataset_matches_source():
    ds = load_dataset()
    assert ds.n_days == 366 and ds.pv_pu.shape == (366, 24)
    assert ds.days[0] == "2024-01-01" and ds.days[-1] == "2024-12-31"
    # price €/MWh → €/kWh; range and negative hours as documented in the data README
    assert ds.price_eur_per_kwh.min() == pytest.approx(-0.13545)
    assert ds.price_eur_per_kwh.max() == pytest.approx(0.93628)
    assert int((ds.price_eur_per_kwh < 0).sum()) == 457
    assert ds.price_eur_per_kwh[0, 0] == pytest.approx(0.0001)
    for a in (ds.pv_pu, ds.wind_pu, ds.load_pu):
        assert a.min() >= 0 and a.max() == pytest.approx(1.0)
    # PV peaks around midday
    assert 11 <= int(np.argmax(ds.pv_pu.mean(axis=0))) <= 13


def test_custom_csv_and_gz(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text(csv_text(5))
    ds = load_dataset(p)
    assert ds.n_days == 5 and list(ds.test_days) == [4]
    assert ds.price_eur_per_kwh[1, 3] == pytest.approx(0.053)
    gz = tmp_path / "mine.csv.gz"
    gz.write_bytes(gzip.compress(csv_text(5).encode()))
    assert np.array_equal(load_dataset(gz).pv_pu, ds.pv_pu)
    e = parallel_env(dataset=str(p))
    obs, infos = e.reset(options={"day": 2})
    assert infos["mg_0"]["price_eur_per_kwh"] == pytest.approx(0.05)


def test_arrays_dataset_in_env():
    hours = 24 * 3
    ds = Dataset.from_arrays(pv_pu=np.zeros(hours), wind_pu=np.full(hours, 0.5), load_pu=np.full(hours, 0.8),
                             price_eur_per_mwh=np.full(hours, -20.0))
    e = parallel_env(dataset=ds)
    obs, infos = e.reset(options={"day": 1})
    assert obs["mg_0"][3] == pytest.approx(-0.2)  # -0.02 €/kWh ÷ 0.1
    _, _, _, _, infos = e.step({a: np.zeros(4, np.float32) for a in e.agents})
    assert infos["mg_1"]["p_wt_kw"] == pytest.approx(0.5 * 350)


@pytest.mark.parametrize("mutate, match", [
    (lambda t: t.replace("price_eur_per_mwh", "price"), r"missing column\(s\) \['price_eur_per_mwh'\]"),
    (lambda t: "\n".join(t.splitlines()[:-3]) + "\n", "not a positive multiple of 24|expected hour"),
    (lambda t: t.replace("2030-01-01,3,", "2030-01-01,4,", 1), r"row 5, column 'hour': expected hour 3"),
    (lambda t: t.replace(",0.3,0.6,", ",0.3,1.6,", 1), r"load_pu: value 1.6.*outside \[0, 1\]"),
    (lambda t: t.replace(",0.3,0.6,", ",0.3,nan,", 1), "non-finite"),
    (lambda t: t.replace(",0.3,0.6,", ",0.3,0.6,7,", 1), "row 2: 7 fields"),
])
def test_malformed_csv_names_the_problem(tmp_path, mutate, match):
    p = tmp_path / "bad.csv"
    p.write_text(mutate(csv_text(2)))
    with pytest.raises(DataError, match=match):
        load_dataset(p)


def test_bad_number_names_row_and_column(tmp_path):
    lines = csv_text(1).splitlines()
    parts = lines[6].split(",")
    parts[3] = "0,5".replace(",", ";")  # a decimal comma typo
    lines[6] = ",".join(parts)
    p = write_csv(tmp_path, "typo.csv", lines)
    with pytest.raises(DataError, match=r"row 7, column 'wind_pu': not a number: '0;5'"):
        load_dataset(p)


def test_missing_file_and_bad_arrays():
    with pytest.raises(DataError, match="neither a bundled dataset"):
        load_dataset("no_such_file.csv")
    with pytest.raises(DataError, match="multiple of 24"):
        Dataset.from_arrays(np.zeros(25), np.zeros(25), np.zeros(25), np.zeros(25))
    with pytest.raises(DataError, match="disagree in shape"):
        Dataset.from_arrays(np.zeros(24), np.zeros(48), np.zeros(24), np.zeros(24))


# ---------------------------------------------------------------- prices: unit and plausibility

def arrays(n_days=2, price=50.0):
    hours = 24 * n_days
    return dict(pv_pu=np.zeros(hours), wind_pu=np.full(hours, 0.5), load_pu=np.full(hours, 0.8),
                price_eur_per_mwh=np.full(hours, price) if np.isscalar(price) else price)


def test_prices_in_eur_per_kwh_are_rejected():
    with pytest.raises(DataError, match=r"price_eur_per_mwh: every value is within ±1 €/MWh \(largest \|price\| "
                                        r"0.08\): this looks like €/kWh.*multiply by 1000"):
        Dataset.from_arrays(**arrays(price=0.08))
    mixed = np.linspace(-0.3, 0.2, 48)  # negative and positive, all |p| < 1
    with pytest.raises(DataError, match=r"largest \|price\| 0.3\).*€/kWh"):
        Dataset.from_arrays(**arrays(price=mixed))


def test_prices_outside_the_plausible_range_are_rejected():
    with pytest.raises(DataError, match=r"price_eur_per_mwh: value 1e\+09 at day day000 hour 0 is outside the "
                                        r"plausible range \[-1000, 10000\] €/MWh"):
        Dataset.from_arrays(**arrays(price=1e9))
    low = np.full(48, 40.0)
    low[30] = -1500.0
    with pytest.raises(DataError, match=r"price_eur_per_mwh: value -1500 at day day001 hour 6 .*plausible range"):
        Dataset.from_arrays(**arrays(price=low))


def test_plausible_price_edges_and_all_zero_prices_are_accepted():
    edge = np.full(48, 60.0)
    edge[:2] = [-1000.0, 10000.0]
    ds = Dataset.from_arrays(**arrays(price=edge))
    assert ds.price_eur_per_kwh[0, :2].tolist() == [-1.0, 10.0]
    assert not Dataset.from_arrays(**arrays(price=0.0)).price_eur_per_kwh.any()  # free energy is legitimate
    some_tiny = np.full(48, 50.0)
    some_tiny[:24] = 0.2  # small prices are fine when the dataset as a whole is in €/MWh
    assert Dataset.from_arrays(**arrays(price=some_tiny)).price_eur_per_kwh[0, 0] == pytest.approx(2e-4)


def test_direct_dataset_checks_prices_in_eur_per_kwh():
    pu = np.full((1, 24), 0.5)
    with pytest.raises(DataError, match=r"price_eur_per_kwh: value 50 .*outside the plausible range \[-1, 10\] €/kWh"):
        Dataset(days=("d",), pv_pu=pu, wind_pu=pu, load_pu=pu, price_eur_per_kwh=np.full((1, 24), 50.0))
    with pytest.raises(DataError, match=r"price_eur_per_kwh: every value is within ±0.001 €/kWh"):
        Dataset(days=("d",), pv_pu=pu, wind_pu=pu, load_pu=pu, price_eur_per_kwh=np.full((1, 24), 8e-5))


def test_csv_prices_in_eur_per_kwh_are_rejected(tmp_path):
    p = tmp_path / "kwh.csv"
    rows = [HEADER] + [f"2030-01-0{d + 1},{h},0.1,0.3,0.6,{0.05 + h / 100:.3f}" for d in range(2) for h in range(24)]
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"kwh\.csv: price_eur_per_mwh: every value is within ±1 €/MWh.*€/kWh"):
        load_dataset(p)


# ---------------------------------------------------------------- immutability

def test_from_arrays_copies_the_callers_arrays():
    a = arrays()
    ds = Dataset.from_arrays(**a)
    for v in a.values():
        v[:] = 0.9  # the caller changes its arrays after validation
    assert ds.wind_pu[0, 0] == 0.5 and ds.load_pu[1, 23] == 0.8 and ds.price_eur_per_kwh[0, 0] == pytest.approx(0.05)
    pv_list = [0.9] * 48  # a plain list, reshaped to (2, 24)
    ds = Dataset.from_arrays(pv_list, **{k: v for k, v in arrays().items() if k != "pv_pu"})
    pv_list[0] = 0.3
    assert ds.pv_pu[0, 0] == 0.9


def test_dataset_arrays_are_read_only():
    ds = Dataset.from_arrays(**arrays())
    for key in ("pv_pu", "wind_pu", "load_pu", "price_eur_per_kwh"):
        a = getattr(ds, key)
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0, 0] = 0.1
        with pytest.raises(ValueError, match="read-only"):
            a.reshape(-1)[3] = 0.1  # views are read-only too
    with pytest.raises(AttributeError):
        ds.pv_pu = np.ones((2, 24))  # frozen dataclass


def test_direct_dataset_copies_and_freezes():
    pu = np.full((1, 24), 0.5)
    price = np.full((1, 24), 0.05)
    ds = Dataset(days=["2030-01-01"], pv_pu=pu, wind_pu=pu, load_pu=pu, price_eur_per_kwh=price)
    pu[:] = 0.0
    price[:] = 0.0
    assert ds.days == ("2030-01-01",) and ds.pv_pu[0, 0] == 0.5 and ds.price_eur_per_kwh[0, 0] == 0.05
    assert not ds.load_pu.flags.writeable and load_dataset(ds) is ds
    import pickle
    back = pickle.loads(pickle.dumps(ds))
    assert not back.price_eur_per_kwh.flags.writeable and np.array_equal(back.pv_pu, ds.pv_pu)


def test_bundled_dataset_is_shared_but_cannot_be_changed():
    e1, e2 = parallel_env(), parallel_env()
    assert e1.dataset is e2.dataset is load_dataset("smard_lu_2024")
    before = float(e2.dataset.price_eur_per_kwh[0, 0])
    with pytest.raises(ValueError, match="read-only"):
        e1.dataset.price_eur_per_kwh[0, 0] = 99.0
    with pytest.raises(ValueError, match="read-only"):
        e1.dataset.price_eur_per_kwh *= 2
    assert e2.dataset.price_eur_per_kwh[0, 0] == before


# ---------------------------------------------------------------- corrupt and odd files

@pytest.mark.parametrize("content", [
    lambda good: good[: len(good) // 2],  # truncated download
    lambda good: bytes(range(256)) * 3,  # random bytes
    lambda good: good[:10] + bytes(40) + good[50:],  # corrupted body
])
def test_corrupt_gzip_names_the_file(tmp_path, content):
    good = gzip.compress(csv_text(2).encode())
    p = tmp_path / "broken.csv.gz"
    p.write_bytes(content(good))
    with pytest.raises(DataError, match=r"broken\.csv\.gz: not a valid gzip file"):
        load_dataset(p)


def test_gzip_without_gz_suffix_is_read(tmp_path):
    p = tmp_path / "packed.csv"
    p.write_bytes(gzip.compress(csv_text(2).encode()))
    assert load_dataset(p).n_days == 2


def test_utf8_bom_and_crlf_are_fine(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + csv_text(2).replace("\n", "\r\n").encode())
    ds = load_dataset(p)
    assert ds.n_days == 2 and ds.days[0] == "2030-01-01"
    gz = tmp_path / "excel.csv.gz"
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbf" + csv_text(2).encode()))
    assert np.array_equal(load_dataset(gz).price_eur_per_kwh, ds.price_eur_per_kwh)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(csv_text(1).replace("2030-01-01", "Mär-01").encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: not UTF-8 text"):
        load_dataset(p)


@pytest.mark.parametrize("text, match", [
    ("", r"empty\.csv: empty file"),
    ("\n\n  \n", r"empty\.csv: empty file"),
    (HEADER + "\n", r"empty\.csv: no data rows after the header"),
    ("2030-01-01,0,0.1,0.3,0.6,50\n", r"missing column\(s\)"),
])
def test_empty_and_header_only_files(tmp_path, text, match):
    p = tmp_path / "empty.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        load_dataset(p)


def test_row_with_too_few_fields_names_the_row(tmp_path):
    lines = csv_text(1).splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0]  # price missing
    p = write_csv(tmp_path, "short.csv", lines)
    with pytest.raises(DataError, match=r"short\.csv, row 5: 5 fields, header has 6"):
        load_dataset(p)


@pytest.mark.parametrize("value", ["inf", "-inf", "NaN"])
def test_non_finite_cell_names_row_and_column(tmp_path, value):
    p = tmp_path / "nan.csv"
    p.write_text(csv_text(1).replace("2030-01-01,2,0.0000,0.3,", f"2030-01-01,2,0.0000,{value},"))
    with pytest.raises(DataError, match=rf"row 4, column 'wind_pu': non-finite value '{value}'"):
        load_dataset(p)


def test_day_label_changing_mid_day(tmp_path):
    p = tmp_path / "day.csv"
    p.write_text(csv_text(2).replace("2030-01-01,5,", "2030-01-02,5,"))
    with pytest.raises(DataError, match=r"row 7, column 'day': '2030-01-02' inside day '2030-01-01'"):
        load_dataset(p)


def test_hour_written_as_float(tmp_path):
    p = tmp_path / "hours.csv"
    p.write_text(csv_text(1).replace("2030-01-01,3,", "2030-01-01,3.0,"))
    assert load_dataset(p).n_days == 1  # a whole hour written as a float is read as that hour
    p.write_text(csv_text(1).replace("2030-01-01,3,", "2030-01-01,3.7,"))
    with pytest.raises(DataError, match=r"row 5, column 'hour': '3.7' is not a whole hour"):
        load_dataset(p)
    p.write_text(csv_text(1).replace("2030-01-01,3,", "2030-01-01,three,"))
    with pytest.raises(DataError, match=r"row 5, column 'hour': not an integer: 'three'"):
        load_dataset(p)


def test_columns_in_any_order_extra_columns_ignored(tmp_path):
    rows = ["note,price_eur_per_mwh,load_pu,day,wind_pu,hour,pv_pu"]
    rows += [f"x{h},{40 + h},0.5,2030-01-01,0.25,{h},0.0" for h in range(24)]
    p = tmp_path / "order.csv"
    p.write_text("\n".join(rows) + "\n")
    ds = load_dataset(p)
    assert ds.price_eur_per_kwh[0, 5] == pytest.approx(0.045) and ds.wind_pu[0, 0] == 0.25


def test_duplicate_required_column_is_rejected(tmp_path):
    lines = csv_text(1).splitlines()
    lines = [lines[0] + ",pv_pu"] + [line + ",0.5" for line in lines[1:]]  # which pv_pu is meant?
    p = write_csv(tmp_path, "dup.csv", lines)
    with pytest.raises(DataError, match=r"dup\.csv: column\(s\) \['pv_pu'\] appear more than once"):
        load_dataset(p)


def test_bad_source_type():
    with pytest.raises(DataError, match="got int"):
        load_dataset(42)


# ---------------------------------------------------------------- per-unit ranges and day labels

@pytest.mark.parametrize("key, value, match", [
    ("pv_pu", -0.1, r"pv_pu: value -0.1 at day day000 hour 0 is outside \[0, 1\]"),
    ("wind_pu", 1.2, r"wind_pu: value 1.2 at day day000 hour 0 is outside \[0, 1\]"),
    ("load_pu", 1.0001, r"load_pu: value 1.0001 .*outside \[0, 1\]"),
    ("pv_pu", np.nan, r"pv_pu: non-finite value nan at day day000 hour 0"),
])
def test_per_unit_ranges(key, value, match):
    a = arrays()
    a[key] = a[key].copy()
    a[key][0] = value
    with pytest.raises(DataError, match=match):
        Dataset.from_arrays(**a)


def test_per_unit_rounding_noise_is_stored_as_one():
    a = arrays()
    a["load_pu"][0] = 1.0 + 1e-12
    assert Dataset.from_arrays(**a).load_pu[0, 0] == 1.0


def test_duplicate_day_labels_are_rejected(tmp_path):
    with pytest.raises(DataError, match=r"days: label '2030-01-01' is used twice \(day indices 0 and 2\)"):
        Dataset.from_arrays(**arrays(3), days=["2030-01-01", "2030-01-02", "2030-01-01"])
    with pytest.raises(DataError, match=r"days: the label of day index 1 is empty"):
        Dataset.from_arrays(**arrays(2), days=["2030-01-01", " "])
    with pytest.raises(DataError, match=r"days has 1 labels for 2 days"):
        Dataset.from_arrays(**arrays(2), days=["2030-01-01"])
    p = tmp_path / "dupday.csv"
    p.write_text(csv_text(2).replace("2030-01-02", "2030-01-01"))
    with pytest.raises(DataError, match=r"row 26, column 'day': day '2030-01-01' already started at row 2"):
        load_dataset(p)


def test_non_numeric_arrays_name_the_column():
    a = arrays()
    a["wind_pu"] = ["x"] * 48
    with pytest.raises(DataError, match=r"wind_pu: expected an array of numbers"):
        Dataset.from_arrays(**a)
    a = arrays()
    a["price_eur_per_mwh"] = [[50.0] * 24, [50.0] * 23]
    with pytest.raises(DataError, match=r"price_eur_per_mwh: expected an array of numbers"):
        Dataset.from_arrays(**a)


def test_bundled_simbench_profiles_are_weekday_aligned_read_only_columns():
    from mmgrid_env import load_dataset, parallel_env

    ds = load_dataset()
    assert {"simbench_H0_load_pu", "simbench_G1_load_pu", "simbench_pv3_pu", "simbench_wp7_pu"} <= set(ds.columns)
    g1 = ds.column("simbench_G1_load_pu")
    assert g1.shape == (366, 24) and g1.max() == pytest.approx(1.0) and not g1.flags.writeable
    # weekday alignment: the commercial G1 profile is a weekday shape on 2024-01-02 (Tuesday), a weekend shape on
    # 2024-01-06 (Saturday)
    assert ds.days[1] == "2024-01-02" and g1[1, 8:18].mean() > 3 * g1[5, 8:18].mean()
    with pytest.raises(TypeError, match="read-only"):
        ds.profiles["x"] = g1
    with pytest.raises(DataError, match="unknown column 'nope'"):
        ds.column("nope")
    # a microgrid driven by its own profiles: a household load and a PV profile
    env = parallel_env(microgrids=[{"bus": 17, "pv_kwp": 300.0, "wt_kw": 0.0, "load_peak_kw": 200.0,
                                    "load_profile": "simbench_H0_load_pu", "pv_profile": "simbench_pv3_pu"},
                                   {"bus": 32, "pv_kwp": 0.0, "wt_kw": 300.0, "load_peak_kw": 250.0,
                                    "load_profile": "simbench_G1_load_pu"}])
    _, infos = env.reset(options={"day": 1})
    assert infos["mg_0"]["p_load_kw"] == pytest.approx(200.0 * ds.column("simbench_H0_load_pu")[1, 0])
    assert infos["mg_1"]["p_load_kw"] == pytest.approx(250.0 * g1[1, 0])
    from mmgrid_env import ConfigError

    with pytest.raises(ConfigError, match=r"microgrids\[0\].load_profile='H0' is not a column"):
        parallel_env(microgrids=[{"bus": 17, "pv_kwp": 1.0, "wt_kw": 0.0, "load_peak_kw": 1.0, "load_profile": "H0"}])
