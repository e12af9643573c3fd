"""kaifong.streams.city — the synthetic city: a Guangzhou-like unit registry, seeded and reproducible.

Eleven districts of Guangzhou with their real approximate centres and sizes hold a four-level
hierarchy — district → street (街道/镇) → police grid → comprehensive grid — and ~23,000 units
of five kinds (posts on duty at venues, neighbourhood emergency units, grid teams, street
forces and professional stations) with ~290,000 responders. Locations cluster: units around
venues, venues around grid centres, grids around police grids and streets, streets around the
district centre, so the old core is dense and the outer districts sparse. Every unit is a
``unit-registered`` record (``schemas/json/unit-registered.schema.json``) ready to publish.

Everything is drawn from one ``random.Random(seed)`` in a fixed order (no global random, no
clock, no set iteration), so one seed always gives byte-identical output in any process.
District outlines come from fixed per-district generators and do not depend on the seed.

Layer: streams. Imports the standard library and orjson only.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "BBOX",
    "DISTRICTS",
    "EQUIPMENT",
    "KINDS",
    "VENUE_TYPES",
    "City",
    "District",
    "generate",
    "read_registry",
    "write_geo",
    "write_registry",
]

Unit = dict[str, Any]

#: The unit kinds of the registry schema, in the order their shares are listed.
KINDS: tuple[str, ...] = ("post", "unit", "grid_team", "street_force", "professional")
#: Venue types of the registry schema.
VENUE_TYPES: tuple[str, ...] = ("school", "mall", "wholesale_market", "urban_village", "hospital",
                                "transit", "residential", "office", "other")
#: Equipment codes, in the canonical order every unit's list follows (so lists never repeat).
EQUIPMENT: tuple[str, ...] = ("shield", "steel_fork", "baton", "extinguisher", "aed", "life_buoy",
                              "stretcher", "first_aid", "radio", "helmet")
#: Every generated coordinate lies in this box: (lat_min, lat_max, lon_min, lon_max).
BBOX: tuple[float, float, float, float] = (22.5, 23.95, 112.9, 114.05)

# The programme's figures for the default size; the hierarchy scales with ``units`` from them.
_DEFAULT_UNITS = 23_000
_GRIDS_PER_UNIT = 20_000 / _DEFAULT_UNITS
_POLICE_GRIDS_PER_UNIT = 1_700 / _DEFAULT_UNITS

# Kind shares of the unit count (post, unit, grid_team, street_force, professional).
_KIND_SHARES = (0.55, 0.30, 0.10, 0.03, 0.02)

# Responders per kind, inclusive. The brief's ranges (post 2–6, unit 5–20, grid_team 4–10,
# street_force 10–30, professional 6–20) average ~7.5 per unit; the programme counts ~290,000
# responders over 23,000 units (~12.6 each), so each range is scaled by ~1.7. Expected mean:
# .55·7 + .30·21 + .10·10 + .03·35 + .02·24 = 12.68 → ~291,600 for the default size.
_RESPONDERS: dict[str, tuple[int, int]] = {
    "post": (4, 10),
    "unit": (10, 32),
    "grid_team": (6, 14),
    "street_force": (20, 50),
    "professional": (12, 36),
}

_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON_EQUATOR = 111.320


@dataclass(frozen=True)
class District:
    """One district: names, centre (lat, lon), radius, unit weight and a drawable outline.

    ``weight`` is the district's relative share of the city's units (≈ resident population in
    millions), so dividing it by the area gives the density contrast between core and edge.
    ``outline`` is a simple star-shaped polygon of [lat, lon] vertices that contains the whole
    disc of ``radius_km``, so every unit of the district lies inside its outline.
    """

    code: str
    name: str
    name_en: str
    centre: tuple[float, float]
    radius_km: float
    weight: float
    outline: list[tuple[float, float]]

    @property
    def area_km2(self) -> float:
        """Area of the district's disc (π r²), the denominator of unit densities."""
        return math.pi * self.radius_km**2


def _to_latlon(centre: tuple[float, float], x_km: float, y_km: float) -> tuple[float, float]:
    """Local offsets (km east, km north of ``centre``) to (lat, lon), rounded to ~0.1 m.

    One linear map per district (longitude scale fixed at the centre's latitude) keeps geometry
    exact: a point inside the disc in km stays inside the outline drawn with the same map.
    """
    lat0, lon0 = centre
    lat = lat0 + y_km / _KM_PER_DEG_LAT
    lon = lon0 + x_km / (_KM_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat0)))
    # The clamp never bites with the district table below; it is the box's guarantee.
    lat = min(max(lat, BBOX[0]), BBOX[1])
    lon = min(max(lon, BBOX[2]), BBOX[3])
    return round(lat, 6), round(lon, 6)


def _outline(code: str, centre: tuple[float, float], radius_km: float) -> list[tuple[float, float]]:
    """A deterministic jittered polygon (12–16 vertices) around the district's disc.

    Vertex radii stay within 1.08–1.25 r and angles within ±15 % of even spacing, which keeps
    every edge outside the disc of radius r (worst edge ≈ 1.07 r from the centre).
    """
    rng = random.Random(zlib.crc32(code.encode("ascii")))  # fixed per district, seed-independent
    n = rng.randint(12, 16)
    step = 2 * math.pi / n
    points = []
    for k in range(n):
        angle = k * step + rng.uniform(-0.15, 0.15) * step
        r = radius_km * rng.uniform(1.08, 1.25)
        points.append(_to_latlon(centre, r * math.cos(angle), r * math.sin(angle)))
    return points


def _district(code: str, name: str, name_en: str, *, centre: tuple[float, float], radius_km: float,
              weight: float) -> District:
    """Build a :class:`District` with its outline."""
    return District(code, name, name_en, centre, radius_km, weight, _outline(code, centre, radius_km))


#: The eleven districts. Centres are approximate real positions; radii give roughly the real
#: area as a disc (elongated outer districts a little less, so neighbours overlap less);
#: weights are the 2020 census populations in millions.
DISTRICTS: tuple[District, ...] = (
    _district("YX", "越秀区", "Yuexiu", centre=(23.129, 113.267), radius_km=3.3, weight=1.04),
    _district("LW", "荔湾区", "Liwan", centre=(23.092, 113.228), radius_km=4.3, weight=1.12),
    _district("HZ", "海珠区", "Haizhu", centre=(23.084, 113.318), radius_km=5.4, weight=1.82),
    _district("TH", "天河区", "Tianhe", centre=(23.140, 113.370), radius_km=6.6, weight=2.24),
    _district("BY", "白云区", "Baiyun", centre=(23.300, 113.290), radius_km=15.0, weight=3.74),
    _district("HP", "黄埔区", "Huangpu", centre=(23.220, 113.490), radius_km=12.0, weight=1.26),
    _district("PY", "番禺区", "Panyu", centre=(22.950, 113.380), radius_km=13.0, weight=2.65),
    _district("HD", "花都区", "Huadu", centre=(23.420, 113.220), radius_km=17.0, weight=1.64),
    _district("NS", "南沙区", "Nansha", centre=(22.770, 113.530), radius_km=15.0, weight=0.85),
    _district("CH", "从化区", "Conghua", centre=(23.630, 113.570), radius_km=25.0, weight=0.65),
    _district("ZC", "增城区", "Zengcheng", centre=(23.280, 113.790), radius_km=19.5, weight=1.47),
)

# Streets (街道) and towns (镇) per district, close to the real administrative counts (176 in
# all); the towns are the streets farthest from the centre.
_STREETS: dict[str, tuple[int, int]] = {
    "YX": (18, 0), "LW": (22, 0), "HZ": (18, 0), "TH": (21, 0), "BY": (24, 4), "HP": (17, 1),
    "PY": (16, 5), "HD": (10, 4), "NS": (9, 3), "CH": (8, 5), "ZC": (13, 6),
}

# Districts on the Pearl River's water network: their units carry life buoys more often.
_WATER = frozenset({"HZ", "LW", "NS", "PY"})

# Venue mix: a city-wide base, then per-district overrides (urban villages and wholesale
# markets in Baiyun/Liwan/Haizhu/Panyu, offices and malls in Tianhe/Yuexiu).
_VENUE_BASE: dict[str, float] = {
    "school": 8, "mall": 5, "wholesale_market": 3, "urban_village": 10, "hospital": 2,
    "transit": 5, "residential": 45, "office": 10, "other": 3,
}
_VENUE_DISTRICT: dict[str, dict[str, float]] = {
    "YX": {"office": 22, "mall": 12, "school": 10, "hospital": 5, "urban_village": 2, "transit": 7},
    "TH": {"office": 26, "mall": 12, "transit": 7, "urban_village": 6},
    "LW": {"urban_village": 18, "wholesale_market": 12, "office": 5},
    "HZ": {"urban_village": 18, "wholesale_market": 9, "office": 7},
    "BY": {"urban_village": 26, "wholesale_market": 10, "office": 4},
    "PY": {"urban_village": 18, "wholesale_market": 7, "office": 5},
    "HP": {"office": 9, "other": 6},
    "HD": {"urban_village": 14, "wholesale_market": 5, "office": 4},
    "NS": {"office": 4, "transit": 3, "other": 6},
    "CH": {"office": 2, "mall": 2, "transit": 2, "other": 8},
    "ZC": {"office": 3, "transit": 3, "other": 6},
}
# Posts are people on duty at a venue, so they lean to schools, malls, stations and markets;
# units are neighbourhood teams, so they lean to where people live.
_VENUE_KIND: dict[str, dict[str, float]] = {
    "post": {"school": 2.2, "mall": 2.0, "transit": 2.0, "hospital": 1.8, "wholesale_market": 1.6,
             "residential": 0.6, "urban_village": 0.8, "office": 1.0, "other": 0.5},
    "unit": {"school": 0.6, "mall": 0.6, "transit": 0.5, "hospital": 0.6, "wholesale_market": 0.9,
             "residential": 1.4, "urban_village": 1.5, "office": 1.0, "other": 0.5},
}
_VENUE_LABELS: dict[str, tuple[str, ...]] = {
    "school": ("小学", "中学", "幼儿园"),
    "mall": ("商场", "购物中心", "广场"),
    "wholesale_market": ("批发市场", "服装城", "布匹市场"),
    "urban_village": ("村",),
    "hospital": ("医院", "社区卫生服务中心"),
    "transit": ("地铁站", "公交总站", "客运站"),
    "residential": ("小区", "花园", "新村"),
    "office": ("大厦", "写字楼", "科技园"),
    "other": ("公园", "文化广场"),
}
_KIND_LABELS = {"post": "值守岗", "unit": "应急单元", "grid_team": "网格队"}
# Professional stations: (id tag, display label, share).
_SERVICES: tuple[tuple[str, str, float], ...] = (
    ("POL", "派出所", 0.45), ("FIRE", "消防救援站", 0.30), ("MED", "急救站", 0.25),
)
# Characters for place names: two drawn together read as a Cantonese place (东山, 龙岗, 石牌).
_PLACE_CHARS = ("东西南北新龙凤石沙金华荔珠江桥岗塘湖林云山洲涌岭田光明安和永太平兴福昌源"
                "海丰花溪滘瑶芳棠鹤逢元冲")

# Equipment probabilities per kind; venue and district rules raise them (never lower).
_EQUIP_KIND: dict[str, dict[str, float]] = {
    "post": {"extinguisher": 0.85, "first_aid": 0.80, "baton": 0.65, "radio": 0.35, "helmet": 0.15,
             "shield": 0.12, "steel_fork": 0.12, "aed": 0.04, "life_buoy": 0.03, "stretcher": 0.02},
    "unit": {"first_aid": 0.75, "radio": 0.70, "extinguisher": 0.65, "baton": 0.50, "helmet": 0.40,
             "shield": 0.30, "steel_fork": 0.30, "aed": 0.10, "stretcher": 0.10, "life_buoy": 0.05},
    "grid_team": {"radio": 0.90, "first_aid": 0.65, "baton": 0.45, "extinguisher": 0.45,
                  "helmet": 0.30, "shield": 0.15, "steel_fork": 0.15, "aed": 0.05,
                  "life_buoy": 0.05, "stretcher": 0.05},
    "street_force": {"radio": 0.95, "baton": 0.90, "shield": 0.80, "steel_fork": 0.80,
                     "helmet": 0.80, "first_aid": 0.75, "extinguisher": 0.55, "stretcher": 0.30,
                     "aed": 0.20, "life_buoy": 0.15},
}
_EQUIP_SERVICE: dict[str, dict[str, float]] = {
    "POL": {"shield": 0.95, "steel_fork": 0.95, "baton": 0.98, "helmet": 0.90, "radio": 1.0,
            "first_aid": 0.85, "aed": 0.45, "extinguisher": 0.50, "stretcher": 0.20, "life_buoy": 0.15},
    "FIRE": {"extinguisher": 1.0, "helmet": 1.0, "radio": 1.0, "first_aid": 0.95, "aed": 0.70,
             "stretcher": 0.80, "life_buoy": 0.75, "steel_fork": 0.30, "shield": 0.20, "baton": 0.10},
    "MED": {"aed": 1.0, "stretcher": 1.0, "first_aid": 1.0, "radio": 0.95, "helmet": 0.40,
            "extinguisher": 0.40, "life_buoy": 0.15, "shield": 0.05, "steel_fork": 0.05, "baton": 0.05},
}
_EQUIP_VENUE: dict[str, dict[str, float]] = {
    "school": {"shield": 0.75, "steel_fork": 0.75},  # campus-safety kit (shield, steel fork) is standard issue
    "mall": {"shield": 0.70, "steel_fork": 0.70, "aed": 0.30},
    "hospital": {"aed": 0.90, "stretcher": 0.85},
    "transit": {"extinguisher": 0.90, "aed": 0.40},
    "wholesale_market": {"extinguisher": 0.90},  # dense stalls, fire load
    "urban_village": {"extinguisher": 0.85},
}
_EQUIP_WATER = {"life_buoy": 0.45}


@dataclass
class City:
    """A generated city: its seed, units (``unit-registered`` dicts) and the grid hierarchy.

    ``grids`` maps comprehensive grid id → {"district", "street", "police_grid", "centre"};
    ``streets`` maps street id → {"district", "code", "name", "town", "centre"}.
    """

    seed: int
    units: list[Unit]
    districts: tuple[District, ...]
    grids: dict[str, dict[str, Any]]
    streets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def police_grids(self) -> list[str]:
        """Police grid ids, sorted."""
        return sorted({g["police_grid"] for g in self.grids.values()})

    def summary(self) -> dict[str, Any]:
        """The headline figures: counts per level and per kind, responders total."""
        kinds = dict.fromkeys(KINDS, 0)
        for u in self.units:
            kinds[u["kind"]] += 1
        return {
            "seed": self.seed,
            "units": len(self.units),
            "districts": len(self.districts),
            "streets": len(self.streets),
            "police_grids": len(self.police_grids),
            "grids": len(self.grids),
            "responders": sum(u["responders"] for u in self.units),
            "kinds": kinds,
        }


def _apportion(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` by ``weights`` (largest remainder), each share at least ``minimum``.

    Exact and deterministic (ties go to the lower index), so kind and level counts sum to the
    requested totals instead of drifting with rounding. If ``minimum`` times the number of
    shares exceeds ``total``, every share gets ``minimum`` and the sum exceeds ``total``.
    """
    n = len(weights)
    rest = total - minimum * n
    if rest <= 0:
        return [minimum] * n
    wsum = sum(weights)
    quotas = [rest * w / wsum for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(n), key=lambda i: (counts[i] - quotas[i], i))
    for i in order[: rest - sum(counts)]:
        counts[i] += 1
    return [minimum + c for c in counts]


def _near(rng: random.Random, x: float, y: float, sigma: float, limit: float) -> tuple[float, float]:
    """A Gaussian point around (x, y) km, redrawn until inside the district disc of ``limit``.

    The parent point is itself inside the disc, so falling back to it after a few misses keeps
    every point inside without piling points up on the boundary.
    """
    for _ in range(8):
        nx, ny = rng.gauss(x, sigma), rng.gauss(y, sigma)
        if nx * nx + ny * ny <= limit * limit:
            return nx, ny
    return x, y


def _place_name(rng: random.Random, taken: set[str]) -> str:
    """Two place characters not yet used in this district (e.g. 龙岗)."""
    while True:
        a, b = rng.sample(_PLACE_CHARS, 2)
        if a + b not in taken:
            taken.add(a + b)
            return a + b


def _equipment(rng: random.Random, probs: dict[str, float], venue: str, water: bool) -> list[str]:
    """Draw a kit: each item independently, probabilities raised by venue and waterside rules."""
    p = dict(probs)
    for rules in (_EQUIP_VENUE.get(venue, {}), _EQUIP_WATER if water else {}):
        for item, q in rules.items():
            p[item] = max(p.get(item, 0.0), q)
    kit = [item for item in EQUIPMENT if rng.random() < p.get(item, 0.0)]
    # Nobody is registered empty-handed: a first-aid kit is the minimum standard issue.
    return kit or ["first_aid"]


@dataclass
class _Venue:
    """A venue while generating: id, type, display label and km position."""

    vid: str
    vtype: str
    label: str
    x: float
    y: float


@dataclass(eq=False)
class _Street:
    """A street (街道) or town (镇) while generating: id, km position, density and its grids."""

    sid: str
    name: str
    town: bool
    x: float
    y: float
    spread: float  # km sigma of its police grids around the centre
    weight: float  # relative density of units
    grids: list[_Grid] = field(default_factory=list)


@dataclass(eq=False)
class _Grid:
    """A comprehensive grid while generating: ids, km position, spread and venues so far."""

    gid: str
    street: _Street
    pg: str
    x: float
    y: float
    spread: float  # km sigma of venues and bases around the centre
    weight: float  # relative density of units
    venues: list[_Venue] = field(default_factory=list)
    seq: int = 0  # last unit number used in this grid


def _streets(rng: random.Random, d: District) -> list[_Street]:
    """The district's streets: Gaussian around the centre, numbered from the core outwards.

    Density decays with distance from the centre, and outer streets spread wider (the same
    number of grids over more ground), which is what makes the core dense; the farthest
    streets are towns (镇), as in the real outer districts.
    """
    r = d.radius_km
    count, towns = _STREETS[d.code]
    points = sorted((_near(rng, 0.0, 0.0, 0.45 * r, r) for _ in range(count)),
                    key=lambda p: (p[0] ** 2 + p[1] ** 2, p))
    names: set[str] = set()
    streets = []
    for i, (x, y) in enumerate(points):
        dist = math.hypot(x, y)
        town = i >= count - towns
        streets.append(_Street(
            sid=f"{d.code}-S{i + 1:02d}", name=_place_name(rng, names) + ("镇" if town else "街道"),
            town=town, x=x, y=y, spread=r / math.sqrt(count) * (0.7 + 0.8 * dist / r),
            weight=math.exp(-dist / (0.6 * r)) * rng.lognormvariate(0.0, 0.25)))
    return streets


def _record(rng: random.Random, kind: str, uid: str, *, name: str, d: District, g: _Grid,
            venue: tuple[str, str], at: tuple[float, float], kit: list[str]) -> Unit:
    """One schema-shaped ``unit-registered`` record (responders drawn from the kind's range)."""
    lo, hi = _RESPONDERS[kind]
    lat, lon = _to_latlon(d.centre, *at)
    return {
        "event_id": f"reg-{uid}", "unit_id": uid, "kind": kind, "name": name, "district": d.name,
        "street": g.street.sid, "police_grid": g.pg, "grid": g.gid,
        "venue": {"id": venue[0], "type": venue[1]}, "home": {"lat": lat, "lon": lon},
        "responders": rng.randint(lo, hi), "equipment": kit,
    }


def _venue_cum(code: str, kind: str) -> list[float]:
    """Cumulative venue-type weights for ``kind`` in district ``code`` (for ``rng.choices``)."""
    mix = {**_VENUE_BASE, **_VENUE_DISTRICT.get(code, {})}
    acc, cum = 0.0, []
    for vt in VENUE_TYPES:
        acc += mix[vt] * _VENUE_KIND[kind][vt]
        cum.append(acc)
    return cum


def generate(seed: int = 7, units: int = _DEFAULT_UNITS) -> City:
    """Generate the city for ``seed`` with ``units`` units (deterministic for a seed).

    The hierarchy scales with ``units`` (≈20,000 comprehensive and ≈1,700 police grids at the
    default 23,000); the 176 streets are fixed, as in the real city.
    """
    if units < 1:
        raise ValueError(f"units must be at least 1, got {units}")
    rng = random.Random(seed)
    wsum = sum(d.weight for d in DISTRICTS)
    shares = [d.weight / wsum for d in DISTRICTS]
    n_streets = sum(n for n, _ in _STREETS.values())
    n_kind = dict(zip(KINDS, _apportion(units, _KIND_SHARES), strict=True))
    pg_per_district = _apportion(max(n_streets, round(units * _POLICE_GRIDS_PER_UNIT)), shares)
    grids_per_district = _apportion(max(n_streets, round(units * _GRIDS_PER_UNIT)), shares)
    kind_per_district = {k: _apportion(n_kind[k], shares) for k in ("post", "unit", "grid_team")}
    # Professional stations cover territory as well as people, so area counts for 40 %.
    area_sum = sum(d.area_km2 for d in DISTRICTS)
    prof_weights = [0.6 * s + 0.4 * d.area_km2 / area_sum for s, d in zip(shares, DISTRICTS, strict=True)]
    prof_per_district = _apportion(n_kind["professional"], prof_weights,
                                   minimum=min(1, n_kind["professional"] // len(DISTRICTS)))

    out: list[Unit] = []
    grids_out: dict[str, dict[str, Any]] = {}
    streets_out: dict[str, dict[str, Any]] = {}
    all_streets: list[tuple[District, _Street]] = []

    for di, d in enumerate(DISTRICTS):
        r = d.radius_km
        water = d.code in _WATER
        streets = _streets(rng, d)
        all_streets.extend((d, s) for s in streets)
        for s in streets:
            streets_out[s.sid] = {"district": d.name, "code": d.code, "name": s.name, "town": s.town,
                                  "centre": list(_to_latlon(d.centre, s.x, s.y))}

        # Police grids per street, then comprehensive grids per police grid (each at least one);
        # a police grid's ground shrinks with the number of grids it holds.
        pg_counts = _apportion(pg_per_district[di], [s.weight for s in streets], minimum=1)
        pgs: list[tuple[_Street, str, float, float, float, float]] = []  # street, id, x, y, spread, weight
        for s, npg in zip(streets, pg_counts, strict=True):
            for k in range(npg):
                px, py = _near(rng, s.x, s.y, 0.6 * s.spread, r)
                pgs.append((s, f"{s.sid}-PG{k + 1:02d}", px, py, s.spread / math.sqrt(npg),
                            s.weight / npg * rng.lognormvariate(0.0, 0.2)))
        g_counts = _apportion(grids_per_district[di], [p[5] for p in pgs], minimum=1)
        grids: list[_Grid] = []
        for (s, pgid, px, py, pg_spread, pw), ng in zip(pgs, g_counts, strict=True):
            for _ in range(ng):
                gx, gy = _near(rng, px, py, 0.7 * pg_spread, r)
                g = _Grid(f"{pgid}-G{len(grids) + 1:04d}", s, pgid, gx, gy,
                          0.5 * pg_spread / math.sqrt(ng), pw / ng * rng.lognormvariate(0.0, 0.4))
                grids.append(g)
                s.grids.append(g)
                grids_out[g.gid] = {"district": d.name, "street": s.sid, "police_grid": pgid,
                                    "centre": list(_to_latlon(d.centre, gx, gy))}
        cum = list(itertools.accumulate(g.weight for g in grids))

        # Posts and units: each picks a grid by weight, then reuses one of the grid's venues or
        # opens a new one there (type from the district's mix, leaning by kind).
        for kind, letter in (("post", "P"), ("unit", "U")):
            vcum = _venue_cum(d.code, kind)
            for g in rng.choices(grids, cum_weights=cum, k=kind_per_district[kind][di]):
                if g.venues and rng.random() < 0.4:
                    venue = rng.choice(g.venues)
                else:
                    vtype = rng.choices(VENUE_TYPES, cum_weights=vcum)[0]
                    label = "".join(rng.sample(_PLACE_CHARS, 2)) + rng.choice(_VENUE_LABELS[vtype])
                    vx, vy = _near(rng, g.x, g.y, g.spread, r)
                    venue = _Venue(f"{g.gid}-V{len(g.venues) + 1:02d}", vtype, label, vx, vy)
                    g.venues.append(venue)
                g.seq += 1
                uid = f"{g.gid}-{letter}{g.seq:02d}"
                out.append(_record(
                    rng, kind, uid, d=d, g=g, venue=(venue.vid, venue.vtype),
                    name=f"{d.name}-{g.street.name}-{venue.label}-{_KIND_LABELS[kind]}-{g.seq}",
                    # A few tens of metres apart: different gates and floors of one venue.
                    at=_near(rng, venue.x, venue.y, 0.03, r),
                    kit=_equipment(rng, _EQUIP_KIND[kind], venue.vtype, water)))

        # Grid teams: at most one per grid, in distinct grids drawn by weight (Efraimidis–
        # Spirakis keys u^(1/w)), so "one team per few grids" holds instead of clumping.
        n_teams = min(kind_per_district["grid_team"][di], len(grids))
        keys = [rng.random() ** (1.0 / g.weight) for g in grids]
        for i in sorted(sorted(range(len(grids)), key=lambda i: -keys[i])[:n_teams]):
            g = grids[i]
            g.seq += 1
            uid = f"{g.gid}-T{g.seq:02d}"
            out.append(_record(
                rng, "grid_team", uid, d=d, g=g, venue=(f"{uid}-BASE", "other"),
                name=f"{d.name}-{g.street.name}-{_KIND_LABELS['grid_team']}-{g.gid[-5:]}",
                at=_near(rng, g.x, g.y, g.spread, r),
                kit=_equipment(rng, _EQUIP_KIND["grid_team"], "other", water)))

        # Professional stations (police, fire, medical), spread over the district by grid weight.
        for n in range(prof_per_district[di]):
            tag, label, _ = rng.choices(_SERVICES, weights=[s[2] for s in _SERVICES])[0]
            g = rng.choices(grids, cum_weights=cum)[0]
            uid = f"{d.code}-PRO-{tag}-{n + 1:03d}"
            out.append(_record(
                rng, "professional", uid, d=d, g=g, venue=(f"{uid}-BASE", "other"),
                name=f"{d.name}-{g.street.name[:2]}{label}-{n + 1}",
                at=_near(rng, g.x, g.y, g.spread, r),
                kit=_equipment(rng, _EQUIP_SERVICE[tag], "other", water)))

    # Street forces: two or more per street when there are enough, the rest to the busiest
    # streets (by grid weight); a tiny city has fewer forces than streets.
    n_force = n_kind["street_force"]
    per_street = _apportion(n_force, [sum(g.weight for g in s.grids) for _, s in all_streets],
                            minimum=min(2, n_force // len(all_streets)))
    for (d, s), count in zip(all_streets, per_street, strict=True):
        for n in range(count):
            g = rng.choices(s.grids, weights=[m.weight for m in s.grids])[0]
            uid = f"{s.sid}-SF{n + 1:02d}"
            label = "镇应急队" if s.town else "街道应急队"
            out.append(_record(
                rng, "street_force", uid, d=d, g=g, venue=(f"{uid}-BASE", "other"),
                name=f"{d.name}-{s.name}-{label}-{n + 1}",
                at=_near(rng, g.x, g.y, g.spread, d.radius_km),
                kit=_equipment(rng, _EQUIP_KIND["street_force"], "other", d.code in _WATER)))

    out.sort(key=lambda u: u["unit_id"])
    return City(seed=seed, units=out, districts=DISTRICTS, grids=grids_out, streets=streets_out)


_CSV_FIELDS = ("event_id", "unit_id", "kind", "name", "district", "street", "police_grid", "grid",
               "venue_id", "venue_type", "lat", "lon", "responders", "equipment")


def write_registry(city: City, path: Path, fmt: str = "jsonl") -> int:
    """Write the city's units to ``path`` as JSON lines (orjson) or CSV; return the count.

    CSV flattens venue → venue_id/venue_type, home → lat/lon and joins equipment with "|".
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown registry format {fmt!r} (jsonl or csv)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(u) + b"\n" for u in city.units))
        return len(city.units)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CSV_FIELDS)
        for u in city.units:
            # repr of a float round-trips exactly, so CSV reads back equal to the JSON form.
            writer.writerow([u.get("event_id", ""), u["unit_id"], u["kind"], u["name"], u["district"],
                             u.get("street", ""), u["police_grid"], u["grid"], u["venue"]["id"],
                             u["venue"]["type"], repr(u["home"]["lat"]), repr(u["home"]["lon"]),
                             u["responders"], "|".join(u["equipment"])])
    return len(city.units)


def read_registry(path: Path) -> list[Unit]:
    """Read a registry written by :func:`write_registry` (CSV if the suffix is .csv, else JSONL)."""
    if path.suffix.lower() != ".csv":
        rows: list[Unit] = []
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            row = orjson.loads(line)
            if isinstance(row, dict):
                rows.append(row)
                continue
            # ValueError like orjson's own decode errors: the file's content is wrong, not a type.
            raise ValueError(f"{path}:{n}: expected a JSON object per line")
        return rows
    units: list[Unit] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            u: Unit = {}
            if row["event_id"]:
                u["event_id"] = row["event_id"]
            u.update(unit_id=row["unit_id"], kind=row["kind"], name=row["name"], district=row["district"])
            if row["street"]:
                u["street"] = row["street"]
            u.update(
                police_grid=row["police_grid"], grid=row["grid"],
                venue={"id": row["venue_id"], "type": row["venue_type"]},
                home={"lat": float(row["lat"]), "lon": float(row["lon"])},
                responders=int(row["responders"]),
                equipment=row["equipment"].split("|") if row["equipment"] else [],
            )
            units.append(u)
    return units


def write_geo(city: City, path: Path) -> None:
    """Write district names, centres, radii, outlines and unit counts as JSON (for a map)."""
    counts = dict.fromkeys((d.name for d in city.districts), 0)
    for u in city.units:
        counts[u["district"]] = counts.get(u["district"], 0) + 1
    doc = {
        "seed": city.seed,
        "bbox": {"lat_min": BBOX[0], "lat_max": BBOX[1], "lon_min": BBOX[2], "lon_max": BBOX[3]},
        "districts": [
            {"code": d.code, "name": d.name, "name_en": d.name_en, "centre": list(d.centre),
             "radius_km": d.radius_km, "weight": d.weight, "units": counts[d.name],
             "outline": [list(p) for p in d.outline]}
            for d in city.districts
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc))
