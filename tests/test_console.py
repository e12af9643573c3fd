"""Issue 7: the command-centre console end to end — a real worker on the embedded stack, events
published with kafka-python, and the page driven in headless Chromium (started by this test)
through Playwright. Screenshots land in test-artifacts/ (console.png, console-city.png)."""

from __future__ import annotations

import json
import random
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from playwright import sync_api  # the test extra `playwright` (its wheel bundles the driver)

from kaifong.streams.city import DISTRICTS, generate
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "t0ken"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the distribution (Debian `chromium`), started for these tests;
    Playwright's own browser download (`playwright install`) is never used."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def artifacts() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")


def send(p: KafkaProducer, settings: Settings, suffix: str, key: str, event: dict[str, Any]) -> None:
    p.send(settings.topic_prefix + suffix, key=key.encode(), value=orjson.dumps(event))


def incident(incident_id: str, **over: Any) -> dict[str, Any]:
    event = {"event_id": f"{incident_id}-r", "incident_id": incident_id, "category": "fire", "severity": 2,
             "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": 23.129, "lon": 113.264},
             "district": "越秀区", "grid": "YX-S01-PG01-G0001", "source": "call_110", "exercise": False}
    event.update(over)
    return event


def seconds_of(clock: str) -> int:
    """'0:59' / '1:02:03' → seconds (a pending ring's countdown)."""
    parts = [int(x) for x in clock.split(":")]
    total = 0
    for x in parts:
        total = total * 60 + x
    return total


def open_console(browser: Any, base: str, width: int = 1600, height: int = 1000) -> tuple[Any, list[str], list[str]]:
    """A page on the console, signed in with the token, recording every request and page error."""
    page = browser.new_page(viewport={"width": width, "height": height})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    # An old bookmark's ?token= signs nothing in (it is only taken out of the address bar): the
    # console signs in with the token in a POST body, and the session rides in an HttpOnly cookie.
    page.goto(f"{base}/?token={TOKEN}")
    page.fill("#signin-token", TOKEN)
    page.click("#signin-submit")
    page.wait_for_selector("#who:not([hidden])", timeout=5_000)
    page.wait_for_selector("body[data-live='1']", timeout=15_000)
    return page, requests, errors


def test_console_live(browser, new_settings, start_worker, artifacts) -> None:
    settings = new_settings(api_token=TOKEN)
    worker = start_worker(settings)
    page, requests, errors = open_console(browser, worker.base_url)
    assert "token=" not in page.url, "the token is taken out of the address bar"
    assert page.locator(".district-name", has_text="越秀区").is_visible()  # Chinese names render
    assert page.locator("#f-district option", has_text="天河区 Tianhe").count() == 1

    p = producer(settings)
    fire = incident("con-fire-1", severity=1, description=f"三楼冒烟 {XSS}")
    drill = incident("con-drill-1", severity=3, exercise=True, district="天河区", grid="TH-S01-PG01-G0002",
                     location={"lat": 23.14, "lon": 113.37}, category="crowd")
    started = time.monotonic()
    send(p, settings, "incidents.reported.v1", fire["incident_id"], fire)
    p.flush()
    card = page.locator('.incident[data-incident="con-fire-1"]')
    card.wait_for(timeout=2_000)
    assert time.monotonic() - started < 2.0, "the incident appears within 2 s"

    # Ring 1 counts down every second (read 1.5 s apart: at least one whole second has passed
    # between the two displayed values, whatever the phase of the 4 Hz display tick).
    clock = card.locator('.clock[data-ring="1"] .clock-value')
    first = clock.inner_text()
    page.wait_for_timeout(1_500)
    second = clock.inner_text()
    assert re.fullmatch(r"\d+:\d\d", first) and re.fullmatch(r"\d+:\d\d", second), (first, second)
    assert seconds_of(second) < seconds_of(first) <= 60
    assert "R1 self_rescue" in card.locator('.clock[data-ring="1"]').inner_text()

    # The description is text, never markup: the literal string is visible, nothing ran.
    desc = card.locator(".desc")
    desc.wait_for(timeout=3_000)
    assert desc.inner_text() == f"三楼冒烟 {XSS}"
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert card.locator("script, img").count() == 0
    assert card.locator(".district-label").inner_text() == "越秀区"

    # Severity 1 escalates at once; acknowledging it publishes the update and flips the button.
    esc_id = "con-fire-1:r1:severity:0"
    item = page.locator(f'.escalation[data-escalation="{esc_id}"]')
    item.wait_for(timeout=2_000)
    button = item.locator("button.ack")
    assert button.inner_text().startswith("Acknowledge")
    button.click()
    page.locator(f'.escalation[data-escalation="{esc_id}"] button.ack[data-state="acked"]').wait_for(timeout=3_000)
    acked = page.locator(f'.escalation[data-escalation="{esc_id}"] button.ack')
    assert acked.inner_text().startswith("Acknowledged") and acked.is_disabled()
    consumer = KafkaConsumer(settings.topic_prefix + "incidents.updates.v1",
                             bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_wait_ms=50, consumer_timeout_ms=1500)
    acks = [orjson.loads(rec.value) for rec in consumer]
    consumer.close()
    assert [(a["kind"], a["escalation_id"], a["by"]) for a in acks] == [
        ("escalation_acknowledged", esc_id, "console")]  # the service token names no seat

    # An exercise incident is visibly different: dashed card, badge, dashed dot on the map.
    send(p, settings, "incidents.reported.v1", drill["incident_id"], drill)
    p.flush()
    p.close()
    drill_card = page.locator('.incident[data-incident="con-drill-1"]')
    drill_card.wait_for(timeout=2_000)
    assert "exercise" in (drill_card.get_attribute("class") or "")
    assert drill_card.locator(".badge-exercise").inner_text() == "EXERCISE 演练"
    dot = page.locator('.incident-dot[data-incident="con-drill-1"] circle.dot')
    assert dot.get_attribute("stroke-dasharray") and "exercise" in (dot.get_attribute("class") or "")
    assert page.locator('.incident-dot[data-incident="con-fire-1"] circle.dot').count() == 1

    # Filters: by district, then by grid text.
    page.select_option("#f-district", "天河区")
    page.wait_for_timeout(150)
    assert page.locator(".incident").count() == 1 and drill_card.is_visible()
    page.select_option("#f-district", "")
    page.fill("#f-grid", "YX-S01")
    page.wait_for_timeout(150)
    assert [page.locator(".incident").nth(i).get_attribute("data-incident")
            for i in range(page.locator(".incident").count())] == ["con-fire-1"]
    page.fill("#f-grid", "")
    page.wait_for_timeout(150)
    assert page.locator(".incident").count() == 2

    page.screenshot(path=str(artifacts / "console.png"))
    assert not errors, errors
    hosts = {urlsplit(u).hostname for u in requests}
    assert hosts <= LOCAL_HOSTS, f"requests left the machine: {sorted(h for h in hosts if h)}"
    page.close()


def test_console_city_screenshot(browser, new_settings, start_worker, artifacts) -> None:
    """The console on the generated city (2,000 units, 15 incidents) — the README's picture."""
    settings = new_settings(api_token=TOKEN)
    worker = start_worker(settings)
    city = generate(seed=7, units=2000)
    now = datetime.now(UTC)
    p = producer(settings)
    for u in city.units:
        send(p, settings, "units.registry.v1", u["unit_id"], u)
    rng = random.Random(7)
    # A few units of one grid take part in an exercise (the exercise incident is dispatched to them).
    exercise_unit = next(u for u in city.units if u["district"] == "海珠区" and u["kind"] == "unit")
    drilling = {u["unit_id"] for u in city.units if u["grid"] == exercise_unit["grid"]}
    for u in city.units:
        status = "drilling" if u["unit_id"] in drilling else "available"
        send(p, settings, "units.status.v1", u["unit_id"], {
            "event_id": f"st-{u['unit_id']}", "unit_id": u["unit_id"], "status": status,
            "at": now.isoformat(), "seq": 1, "location": u["home"]})
    p.flush()
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(int(v) for v in r.hvals("kf:units:avail")) < 1900:
        time.sleep(0.2)

    categories = ["fire", "medical", "violence", "crowd", "traffic", "drowning"]
    incidents = []
    for i in range(15):
        d = DISTRICTS[i % len(DISTRICTS)]
        exercise = i == 7
        anchor = exercise_unit if exercise else rng.choice([u for u in city.units if u["district"] == d.name])
        age = [20, 45, 75, 130, 200][i % 5]
        incidents.append(incident(
            f"city-{i:02d}", category=categories[i % len(categories)], severity=[2, 3, 4, 3, 1][i % 5],
            reported_at=(now - timedelta(seconds=age)).isoformat(), location=anchor["home"],
            district=anchor["district"], grid=anchor["grid"], exercise=exercise,
            description=["三楼厨房冒烟，有老人被困", "路口两车相撞，一人受伤", "商场门口人员聚集",
                         "河涌边有人落水", "小区内有人晕倒"][i % 5]))
    for event in incidents:
        send(p, settings, "incidents.reported.v1", event["incident_id"], event)
    p.flush()

    page, requests, errors = open_console(browser, worker.base_url, 1920, 1080)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and page.locator(".incident").count() < 15:
        page.wait_for_timeout(200)
    assert page.locator(".incident").count() == 15
    # Three incidents have their first unit on scene (green "met" rings on the picture).
    for event in incidents[:6:2]:
        state = worker_state(worker.base_url, event["incident_id"])
        unit = next((u for u in state["units"] if u["ring"] in (1, 2)), None)
        if unit is None:
            continue
        send(p, settings, "incidents.updates.v1", event["incident_id"], {
            "event_id": f"{event['incident_id']}-os", "incident_id": event["incident_id"], "kind": "on_scene",
            "unit_id": unit["unit_id"], "at": datetime.now(UTC).isoformat()})
    p.flush()
    p.close()
    page.locator(".clock.met").first.wait_for(timeout=5_000)
    page.wait_for_timeout(1_200)
    page.screenshot(path=str(artifacts / "console-city.png"))
    assert page.locator(".escalation").count() >= 1
    assert page.locator(".badge-exercise").count() >= 1
    assert not errors, errors
    assert {urlsplit(u).hostname for u in requests} <= LOCAL_HOSTS
    page.close()


def worker_state(base: str, incident_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/incidents/{incident_id}", timeout=5) as resp:
        state: dict[str, Any] = json.loads(resp.read())["state"]
        return state


#: Ring 1 has a 60 s target (and, below, a 45 s acknowledgement window); the outer rings never fall due.
ANSWER_RINGS = "self_rescue:60,mutual_aid:3600,grid:3601,street:3602,professional:3603"


def post(unit_id: str, metres_north: float) -> dict[str, Any]:
    """A post (ring 1's kind) of 越秀区 this many metres north of the test incidents' point."""
    return {"event_id": f"reg-{unit_id}", "unit_id": unit_id, "kind": "post", "name": unit_id, "district": "越秀区",
            "police_grid": "PG1", "grid": "YX-S01-PG01-G0001", "venue": {"id": f"V-{unit_id}", "type": "mall"},
            "home": {"lat": 23.129 + metres_north / 111_000, "lon": 113.264}, "responders": 4, "equipment": []}


def test_console_unit_answers_and_escalation_causes(browser, new_settings, start_worker, artifacts) -> None:
    """Issue 19: an assigned unit counts its acknowledgement window down, a declined unit is
    struck through with its reason, and the escalation its decline raised names ring and cause."""
    settings = new_settings(api_token=TOKEN, rings=ANSWER_RINGS, ack_windows="1:45", escalation_renotify_s=3600)
    worker = start_worker(settings)
    p = producer(settings)
    units = [post("cq-a", 0), post("cq-b", 10)]  # ring 1 takes both; nobody is left to replace one
    for u in units:
        send(p, settings, "units.registry.v1", u["unit_id"], u)
    p.flush()
    for u in units:
        send(p, settings, "units.status.v1", u["unit_id"], {
            "event_id": f"st-{u['unit_id']}", "unit_id": u["unit_id"], "status": "available",
            "at": datetime.now(UTC).isoformat(), "seq": 1, "location": u["home"]})
    p.flush()
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 20
    while r.zcard("kf:geo:avail:post") < 2:
        assert time.monotonic() < deadline, "units not available"
        time.sleep(0.1)

    page, requests, errors = open_console(browser, worker.base_url)
    send(p, settings, "incidents.reported.v1", "cq-1", incident("cq-1", severity=3, description="商场二楼冒烟"))
    p.flush()
    card = page.locator('.incident[data-incident="cq-1"]')
    card.wait_for(timeout=3_000)
    ack_a = card.locator('.unit-chip[data-unit="cq-a"] .unit-ack')
    ack_b = card.locator('.unit-chip[data-unit="cq-b"] .unit-ack')
    ack_a.wait_for(timeout=5_000)
    ack_b.wait_for(timeout=5_000)

    # The window counts down once a second on the page (read 1.5 s apart).
    def left(text: str) -> int:
        m = re.fullmatch(r"ack (\d+) s 确认 (\d+) 秒", text)
        assert m and m.group(1) == m.group(2), text
        return int(m.group(1))

    first = left(ack_b.inner_text())
    page.wait_for_timeout(1_500)
    second = left(ack_b.inner_text())
    assert 0 < second < first <= 45, (first, second)

    # cq-a declines (busy): struck through with its reason, no countdown any more; nobody is
    # left for ring 1, so the decline escalates — the card names the ring and the cause.
    send(p, settings, "incidents.updates.v1", "cq-1", {
        "event_id": "cq-1-decline-cq-a", "incident_id": "cq-1", "kind": "declined", "unit_id": "cq-a",
        "reason": "busy", "at": datetime.now(UTC).isoformat()})
    p.flush()
    p.close()
    declined = card.locator('.unit-chip.unit-released[data-unit="cq-a"]')
    declined.wait_for(timeout=5_000)
    assert declined.get_attribute("data-status") == "declined"
    assert declined.locator(".unit-mark").inner_text() == "✕ declined 拒绝 (busy 忙碌)"
    assert declined.locator(".unit-ack").count() == 0
    assert "line-through" in declined.locator(".unit-id").evaluate("e => getComputedStyle(e).textDecorationLine")
    assert left(ack_b.inner_text()) <= second, "cq-b still counts down"
    esc = page.locator('.escalation[data-escalation^="cq-1:r1:unit_declined"]')
    esc.wait_for(timeout=5_000)
    assert esc.locator(".esc-ring").inner_text() == "ring 1 self rescue 自救"
    assert esc.locator(".esc-reason").inner_text() == "unit declined 单元拒绝"

    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "console-units.png"))
    assert not errors, errors
    assert {urlsplit(u).hostname for u in requests} <= LOCAL_HOSTS
    page.close()
