"""Tests for kaifong.streams.city: the seeded synthetic city and its registry files."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from kaifong.schemas.validation import InvalidEvent, validate
from kaifong.streams import city as citymod
from kaifong.streams.city import (
    BBOX,
    DISTRICTS,
    EQUIPMENT,
    City,
    District,
    generate,
    read_registry,
    write_geo,
    write_registry,
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
DENSE = ("YX", "LW", "HZ", "TH")
OUTER = ("CH", "ZC", "HD", "PY", "NS", "BY", "HP")
BY_CODE = {d.code: d for d in DISTRICTS}


@pytest.fixture(scope="module")
def city() -> City:
    """The default city (seed 7, 23,000 units), generated once and timed."""
    started = time.perf_counter()
    c = generate()
    # The brief asks for well under 5 s on a 2-core machine; it takes ~1 s.
    assert time.perf_counter() - started < 5.0
    return c


def _digest(c: City) -> str:
    return hashlib.sha256(orjson.dumps([c.units, c.grids, c.streets], option=orjson.OPT_SORT_KEYS)).hexdigest()


def _inside(lat: float, lon: float, polygon: list[tuple[float, float]]) -> bool:
    """Ray casting point-in-polygon on (lat, lon) vertices."""
    inside = False
    n = len(polygon)
    for i in range(n):
        (y1, x1), (y2, x2) = polygon[i], polygon[(i + 1) % n]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _rate(units: list[dict[str, Any]], item: str) -> float:
    return sum(item in u["equipment"] for u in units) / len(units)


def test_every_unit_validates_against_the_schema(city: City) -> None:
    for u in city.units:
        assert validate("unit-registered", u) is u
    # The check has teeth: the schema is closed, so an extra field is refused.
    with pytest.raises(InvalidEvent):
        validate("unit-registered", {**city.units[0], "owner": "x"})


def test_same_seed_same_city_other_seed_different() -> None:
    a, b, other = generate(11, units=3000), generate(11, units=3000), generate(12, units=3000)
    assert a.units == b.units and a.grids == b.grids and a.streets == b.streets
    assert _digest(a) == _digest(b)
    assert a.units != other.units
    assert _digest(a) != _digest(other)


def test_output_does_not_depend_on_the_process_hash_seed() -> None:
    """Set or dict-of-str iteration would leak PYTHONHASHSEED into the output; it must not."""
    code = ("import hashlib, orjson; from kaifong.streams.city import generate; c = generate(5, units=2000); "
            "print(hashlib.sha256(orjson.dumps([c.units, c.grids, c.streets])).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True, timeout=120)
        digests.add(run.stdout.strip())
    assert len(digests) == 1
    assert len(next(iter(digests))) == 64


def test_default_size_figures(city: City) -> None:
    assert abs(len(city.units) - 23_000) <= 230
    assert {u["district"] for u in city.units} == {d.name for d in DISTRICTS}
    assert len(city.districts) == 11
    assert abs(len(city.grids) - 20_000) <= 3_000
    assert abs(len(city.police_grids) - 1_700) <= 255
    assert 150 <= len(city.streets) <= 190
    responders = sum(u["responders"] for u in city.units)
    assert abs(responders - 290_000) <= 29_000
    summary = city.summary()
    assert summary["units"] == len(city.units) and summary["responders"] == responders


def test_kind_mix(city: City) -> None:
    n = len(city.units)
    kinds = Counter(u["kind"] for u in city.units)
    expected = {"post": 0.55, "unit": 0.30, "grid_team": 0.10, "street_force": 0.03, "professional": 0.02}
    for kind, share in expected.items():
        assert abs(kinds[kind] / n - share) <= max(0.2 * share, 0.005), kind
    # Grid teams: about one per few comprehensive grids, never two in one grid.
    teams = Counter(u["grid"] for u in city.units if u["kind"] == "grid_team")
    assert max(teams.values()) == 1
    assert 3 <= len(city.grids) / kinds["grid_team"] <= 15
    # Street forces: every street has at least two.
    forces = Counter(u["street"] for u in city.units if u["kind"] == "street_force")
    assert set(forces) == set(city.streets)
    assert min(forces.values()) >= 2
    # Professional stations reach every district and all three services.
    pro = [u for u in city.units if u["kind"] == "professional"]
    assert {u["district"] for u in pro} == {d.name for d in DISTRICTS}
    assert {u["unit_id"].split("-")[2] for u in pro} == {"POL", "FIRE", "MED"}


def test_responders_within_kind_ranges(city: City) -> None:
    by_kind: dict[str, list[int]] = {}
    for u in city.units:
        by_kind.setdefault(u["kind"], []).append(u["responders"])
    for kind, values in by_kind.items():
        lo, hi = citymod._RESPONDERS[kind]
        assert lo <= min(values) and max(values) <= hi, kind
    # Street forces are the big teams, posts the small ones.
    means = {k: sum(v) / len(v) for k, v in by_kind.items()}
    assert means["street_force"] > means["unit"] > means["post"]


def test_dense_districts_are_denser_than_outer_ones(city: City) -> None:
    counts = Counter(u["district"] for u in city.units)
    density = {d.code: counts[d.name] / (math.pi * d.radius_km**2) for d in DISTRICTS}
    assert min(density[c] for c in DENSE) > max(density[c] for c in OUTER)
    assert max(BY_CODE[c].radius_km for c in DENSE) < min(BY_CODE[c].radius_km for c in OUTER)


def test_units_cluster_towards_the_district_core(city: City) -> None:
    """Distance decay: the inner half of the radius is a quarter of the area but holds far more.

    Uniform scatter would put 25 % there; every district beats 30 % and the city as a whole 50 %.
    """
    inner_total = 0
    for d in DISTRICTS:
        lat0, lon0 = d.centre
        kx = 111.32 * math.cos(math.radians(lat0))
        dists = [math.hypot((u["home"]["lat"] - lat0) * 110.574, (u["home"]["lon"] - lon0) * kx)
                 for u in city.units if u["district"] == d.name]
        inner = sum(x <= d.radius_km / 2 for x in dists)
        inner_total += inner
        assert inner / len(dists) > 0.3, d.code
        assert max(dists) <= d.radius_km * 1.001, d.code
    assert inner_total / len(city.units) > 0.5


def test_ids_unique_ascii_and_hierarchical(city: City) -> None:
    ids = [u["unit_id"] for u in city.units]
    assert len(set(ids)) == len(ids)
    assert len({u["event_id"] for u in city.units}) == len(ids)
    for u in city.units:
        for key in (u["unit_id"], u["street"], u["police_grid"], u["grid"], u["venue"]["id"]):
            assert ID_RE.match(key) and len(key) <= 64 and key.isascii(), key
        grid = city.grids[u["grid"]]
        assert (grid["district"], grid["street"], grid["police_grid"]) == (
            u["district"], u["street"], u["police_grid"])
        assert u["grid"].startswith(u["police_grid"] + "-")
        assert u["police_grid"].startswith(u["street"] + "-")
        assert city.streets[u["street"]]["district"] == u["district"]
        assert u["event_id"] == "reg-" + u["unit_id"]


def test_coordinates_inside_bbox_and_own_district_outline(city: City) -> None:
    lat_min, lat_max, lon_min, lon_max = BBOX
    assert (lat_min, lat_max, lon_min, lon_max) == (22.5, 23.95, 112.9, 114.05)
    outlines = {d.name: d.outline for d in DISTRICTS}
    for u in city.units:
        lat, lon = u["home"]["lat"], u["home"]["lon"]
        assert lat_min <= lat <= lat_max and lon_min <= lon <= lon_max
        assert _inside(lat, lon, outlines[u["district"]]), u["unit_id"]
    for g in city.grids.values():
        assert lat_min <= g["centre"][0] <= lat_max and lon_min <= g["centre"][1] <= lon_max


def test_district_table() -> None:
    assert len(DISTRICTS) == 11
    assert len({d.code for d in DISTRICTS}) == 11
    assert {d.name for d in DISTRICTS} == {"越秀区", "荔湾区", "海珠区", "天河区", "从化区", "增城区",
                                           "花都区", "番禺区", "南沙区", "白云区", "黄埔区"}
    for d in DISTRICTS:
        assert isinstance(d, District) and d.code.isascii() and d.name.endswith("区")
        assert 10 <= len(d.outline) <= 16
        assert _inside(d.centre[0], d.centre[1], d.outline)
        for lat, lon in d.outline:
            assert BBOX[0] <= lat <= BBOX[1] and BBOX[2] <= lon <= BBOX[3]
    # Rough geography: Tianhe is east of Liwan, Conghua north of Nansha.
    assert BY_CODE["TH"].centre[1] > BY_CODE["LW"].centre[1]
    assert BY_CODE["CH"].centre[0] > BY_CODE["NS"].centre[0]


def test_venues_and_their_mix(city: City) -> None:
    based = [u for u in city.units if u["kind"] in ("grid_team", "street_force", "professional")]
    assert all(u["venue"] == {"id": u["unit_id"] + "-BASE", "type": "other"} for u in based)
    sited = [u for u in city.units if u["kind"] in ("post", "unit")]
    assert all(u["venue"]["id"].startswith(u["grid"] + "-V") for u in sited)
    # Several units share some venues, and one venue has one type.
    per_venue = Counter(u["venue"]["id"] for u in sited)
    assert sum(n >= 2 for n in per_venue.values()) > 500
    assert len({(u["venue"]["id"], u["venue"]["type"]) for u in sited}) == len(per_venue)

    def share(code: str, vtype: str) -> float:
        here = [u for u in sited if u["district"] == BY_CODE[code].name]
        return float(sum(u["venue"]["type"] == vtype for u in here) / len(here))

    for code in ("BY", "LW", "HZ", "PY"):
        assert share(code, "urban_village") > share("TH", "urban_village")
        assert share(code, "urban_village") > share("YX", "urban_village")
    for code in ("TH", "YX"):
        assert share(code, "office") > 2 * share("BY", "office")
        assert share(code, "mall") > share("BY", "mall")
    assert share("LW", "wholesale_market") > share("TH", "wholesale_market")


def test_equipment_rules(city: City) -> None:
    for u in city.units:
        assert u["equipment"], u["unit_id"]
        assert len(set(u["equipment"])) == len(u["equipment"])
        assert set(u["equipment"]) <= set(EQUIPMENT)
    units = [u for u in city.units if u["kind"] == "unit"]
    posts = [u for u in city.units if u["kind"] == "post"]
    pro = [u for u in city.units if u["kind"] == "professional"]
    kit_pro = sum(len(u["equipment"]) for u in pro) / len(pro)
    kit_post = sum(len(u["equipment"]) for u in posts) / len(posts)
    assert kit_pro > 6 and kit_pro > 1.5 * kit_post
    for item in ("extinguisher", "first_aid", "baton"):
        assert _rate(posts, item) > 0.5, item
    shielded = [u for u in posts + units if u["venue"]["type"] in ("school", "mall")]
    homes = [u for u in posts + units if u["venue"]["type"] == "residential"]
    assert _rate(shielded, "shield") > 0.6 and _rate(shielded, "steel_fork") > 0.6
    assert _rate(shielded, "shield") > 2 * _rate(homes, "shield")
    hospitals = [u for u in posts + units if u["venue"]["type"] == "hospital"]
    assert _rate(hospitals, "aed") > 0.8 and _rate(hospitals, "stretcher") > 0.8
    water_names = {BY_CODE[c].name for c in ("HZ", "LW", "NS", "PY")}
    wet = [u for u in units if u["district"] in water_names]
    dry = [u for u in units if u["district"] not in water_names]
    assert _rate(wet, "life_buoy") > 3 * _rate(dry, "life_buoy")


def test_names_are_places_not_people(city: City) -> None:
    for u in city.units[:: 37]:
        assert u["name"].startswith(u["district"] + "-")
        assert 1 <= len(u["name"]) <= 128
    labels = Counter(u["name"].split("-")[-2] for u in city.units if u["kind"] == "unit")
    assert set(labels) == {"应急单元"}


@pytest.mark.parametrize("suffix,fmt", [(".jsonl", "jsonl"), (".csv", "csv")])
def test_registry_round_trip(city: City, tmp_path: Path, suffix: str, fmt: str) -> None:
    path = tmp_path / f"registry{suffix}"
    assert write_registry(city, path, fmt) == len(city.units)
    back = read_registry(path)
    assert back == city.units
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(city.units) + (1 if fmt == "csv" else 0)


def test_csv_flattening(tmp_path: Path) -> None:
    c = generate(3, units=500)
    path = tmp_path / "small.csv"
    write_registry(c, path, "csv")
    header, first = path.read_text(encoding="utf-8").splitlines()[:2]
    assert header.split(",") == ["event_id", "unit_id", "kind", "name", "district", "street", "police_grid",
                                 "grid", "venue_id", "venue_type", "lat", "lon", "responders", "equipment"]
    assert "|".join(c.units[0]["equipment"]) in first
    jsonl = tmp_path / "small.jsonl"
    write_registry(c, jsonl)
    assert read_registry(jsonl) == read_registry(path) == c.units
    with pytest.raises(ValueError, match="unknown registry format"):
        write_registry(c, tmp_path / "x.xml", "xml")


def test_small_city_still_consistent() -> None:
    c = generate(1, units=300)
    assert len(c.units) == 300
    assert len({u["unit_id"] for u in c.units}) == 300
    for u in c.units:
        validate("unit-registered", u)
        assert u["grid"] in c.grids
    with pytest.raises(ValueError, match="at least 1"):
        generate(1, units=0)


def test_write_geo(city: City, tmp_path: Path) -> None:
    path = tmp_path / "geo" / "city.json"
    write_geo(city, path)
    doc = orjson.loads(path.read_bytes())
    assert doc["seed"] == 7
    assert [d["code"] for d in doc["districts"]] == [d.code for d in DISTRICTS]
    assert sum(d["units"] for d in doc["districts"]) == len(city.units)
    for entry, d in zip(doc["districts"], DISTRICTS, strict=True):
        assert entry["name"] == d.name and entry["centre"] == list(d.centre)
        assert entry["outline"] == [list(p) for p in d.outline]
        assert all(len(p) == 2 for p in entry["outline"])


def test_read_registry_refuses_a_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(orjson.dumps(generate(2, units=200).units[0]) + b"\n\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        read_registry(path)
