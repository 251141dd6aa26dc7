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
    p = tmp_path / "typo.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 7, column 'wind_pu': not a number: '0;5'"):
        load_dataset(p)


def test_missing_file_and_bad_arrays():
    with pytest.raises(DataError, match="neither a bundled dataset"):
        load_dataset("no_such_file.csv")
    with pytest.raises(DataError, match="multiple of 24"):
        Dataset.from_arrays(np.zeros(25), np.zeros(25), np.zeros(25), np.zeros(25))
    with pytest.raises(DataError, match="disagree in shape"):
        Dataset.from_arrays(np.zeros(24), np.zeros(48), np.zeros(24), np.zeros(24))
