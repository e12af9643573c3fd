"""The Alertmanager configuration generated from the seats file, and its deployments.

Checked with the real tools of Alertmanager 0.25 (Debian's prometheus-alertmanager, installed
by .ci/run): ``amtool check-config`` on every shipped file, ``amtool config routes test`` for
where escalations go, and one live run of the server delivering to a webhook sink. Plus the
generator's own rules (validation, default receiver, exercise fence, inhibit rules) and the
Compose and Kubernetes objects that run the HA pair.
"""

from __future__ import annotations

import copy
import doctest
import importlib.util
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from alertmanager_helpers import post_alerts, running_alertmanager, wait_for, webhook_sink

from kaifong.agents.tools import alertmanager as am

ROOT = Path(__file__).resolve().parents[1]
AM_DIR = ROOT / "deploy" / "alertmanager"
SHIPPED = AM_DIR / "alertmanager.yml"
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"


# -- helpers ----------------------------------------------------------------------------------
def amtool() -> str:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is missing: .ci/run installs it "
                    "(Debian package prometheus-alertmanager: apt-get install -y prometheus-alertmanager)")
    return binary


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True, timeout=60)


def routes_to(config: Path, **labels: str) -> list[str]:
    """The receivers ``amtool config routes test`` resolves this label set to, in order."""
    args = [am.matcher(k, "=", v) for k, v in labels.items()]  # quoted: values may hold anything
    done = subprocess.run([amtool(), "config", "routes", "test", f"--config.file={config}", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().split(",")


def write_config(tmp_path: Path, seats: dict[str, Any], **timing: str) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(am.dump(am.render(seats, **timing)), "utf-8")
    checked = check_config(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return path


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_deploy_{path.stem}", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def escalation(seat: str, level: str, district: str = "", *, exercise: bool = False,
               incident: str = "inc-1") -> dict[str, str]:
    return {"alertname": am.ALERTNAME, "incident": incident, "level": level, "district": district, "ring": "3",
            "reason": "ring_deadline_missed", "seat": seat, "exercise": "true" if exercise else "false"}


def hook(url: str, *, exercise: bool = False) -> dict[str, Any]:
    return {"type": "webhook", "url": url, **({"exercise": True} if exercise else {})}


def walk(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in walk(child))]


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return am.example_seats()


# -- the shipped files ------------------------------------------------------------------------
def test_amtool_accepts_every_shipped_config(tmp_path: Path) -> None:
    files = sorted(p for p in AM_DIR.iterdir() if p.suffix in (".yml", ".yaml"))
    assert files == [SHIPPED]
    # The Kubernetes ConfigMap's copy is what the StatefulSet loads: check that one too.
    config_map = yaml.safe_load((K8S / "alertmanager-config.yaml").read_text("utf-8"))
    extracted = tmp_path / "from-configmap.yml"
    extracted.write_text(config_map["data"]["alertmanager.yml"], "utf-8")
    for path in (*files, extracted):
        checked = check_config(path)
        assert checked.returncode == 0, f"{path}: {checked.stdout}{checked.stderr}"
        assert "SUCCESS" in checked.stdout


def test_shipped_config_is_what_the_generator_writes(example: dict[str, Any]) -> None:
    text = SHIPPED.read_text("utf-8")
    assert text.startswith(am.HEADER + "\n")
    assert text == am.dump(am.render(example)), (
        "deploy/alertmanager/alertmanager.yml is stale: run "
        ".venv/bin/python -m kaifong.agents.tools.alertmanager --example > deploy/alertmanager/alertmanager.yml")
    gen = load_module(K8S / "gen_alertmanager_config.py")
    assert (K8S / "alertmanager-config.yaml").read_text("utf-8") == gen.render(), \
        "deploy/k8s/alertmanager-config.yaml is stale: run .venv/bin/python deploy/k8s/gen_alertmanager_config.py"
    assert "越秀区" in text  # Chinese stays readable, not \u escapes


def test_main_prints_the_same_config(example: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    seats = tmp_path / "seats.json"
    seats.write_text(json.dumps(example, ensure_ascii=False), "utf-8")
    assert am.main([str(seats)]) == 0
    assert capsys.readouterr().out == SHIPPED.read_text("utf-8")
    as_yaml = tmp_path / "seats.yaml"
    as_yaml.write_text(yaml.safe_dump(example, allow_unicode=True), "utf-8")
    assert am.load_seats(as_yaml) == example


def test_module_doctests() -> None:
    result = doctest.testmod(am, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0, result


# -- routing, by amtool -----------------------------------------------------------------------
@pytest.mark.parametrize(("labels", "expected"), [
    # A real district escalation reaches the district's seat.
    (escalation("district-YX", "district", "越秀区"), "seat-district-YX"),
    (escalation("city", "city"), "seat-city"),
    (escalation("street-YX-S03", "street", "越秀区"), "seat-street-YX-S03"),
    (escalation("street-ZC-S02", "street", "增城区"), "seat-street-ZC-S02"),
    # No grid seats: kaifong hands a grid escalation to the street seat, which still gets it.
    (escalation("street-YX-S03", "grid", "越秀区"), "seat-street-YX-S03"),
    # No district seat on duty: a district escalation given to the city seat.
    (escalation("city", "district", "越秀区"), "seat-city"),
    # Never dropped: an unknown seat, a district that disagrees, no labels but the seat.
    (escalation("district-XX", "district", "越秀区"), "seat-city"),
    (escalation("nobody", "street", "越秀区"), "seat-city"),
    (escalation("street-YX-S03", "street", "荔湾区"), "seat-city"),
    ({"seat": "street-LW-S01"}, "seat-street-LW-S01"),
    ({"alertname": am.ALERTNAME}, "seat-city"),
    # Exercises: the seat's exercise receiver, else null; never a real receiver.
    (escalation("district-YX", "district", "越秀区", exercise=True), "seat-district-YX-exercise"),
    (escalation("city", "city", exercise=True), "seat-city-exercise"),
    (escalation("street-YX-S03", "street", "越秀区", exercise=True), "null"),
    (escalation("nobody", "district", "越秀区", exercise=True), "null"),
])
def test_amtool_routes_escalations(labels: dict[str, str], expected: str) -> None:
    assert routes_to(SHIPPED, **labels) == [expected]


def test_every_command_seat_and_a_street_per_district_route_home(example: dict[str, Any]) -> None:
    first_street: dict[str, dict[str, Any]] = {}
    for seat in example["seats"]:
        if seat["level"] == "street":
            first_street.setdefault(am.seat_districts(seat)[0], seat)
    sample = [s for s in example["seats"] if s["level"] in ("city", "district")] + list(first_street.values())
    assert len(sample) == 1 + 11 + 11
    for seat in sample:
        district = (am.seat_districts(seat) or [""])[0]
        assert routes_to(SHIPPED, **escalation(seat["id"], seat["level"], district)) == [f"seat-{seat['id']}"]
        drill = routes_to(SHIPPED, **escalation(seat["id"], seat["level"], district, exercise=True))
        assert drill == [f"seat-{seat['id']}-exercise" if seat["level"] != "street" else "null"]


def test_exercises_are_fenced_off_from_real_receivers(example: dict[str, Any]) -> None:
    config = am.render(example)
    routes = config["route"]["routes"]
    fence = routes[0]
    assert fence["matchers"] == ['exercise="true"'] and fence["receiver"] == "null"
    assert not any(r.get("continue") for r in walk(config["route"]))  # first match wins, no copies
    inside = {r["receiver"] for r in walk(fence) if "receiver" in r}
    assert inside and all(name == "null" or name.endswith("-exercise") for name in inside)
    outside = {r["receiver"] for child in routes[1:] for r in walk(child) if "receiver" in r}
    assert outside and not any(name.endswith("-exercise") or name == "null" for name in outside)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["null"] == {"name": "null"}  # no integration at all
    # An exercise receiver holds exactly the seat's exercise-flagged receivers.
    city = next(s for s in example["seats"] if s["id"] == "city")
    assert receivers["seat-city-exercise"]["webhook_configs"] == [
        {"url": r["url"], "send_resolved": True, "max_alerts": 0} for r in city["receivers"] if r.get("exercise")]
    assert "email_configs" not in receivers["seat-city-exercise"]


def test_real_receivers_and_global(example: dict[str, Any]) -> None:
    config = am.render(example)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert len(receivers) == len(config["receivers"])  # unique names
    assert len(receivers) == 1 + 11 + 176 + 12 + 1  # real, exercise (city + districts), null
    city = receivers["seat-city"]
    assert city["webhook_configs"] == [{"url": "http://kaifong-notify-sink:9095/hooks/city", "send_resolved": True,
                                        "max_alerts": 0}]
    assert city["email_configs"] == [{"to": "city-duty@example.org", "send_resolved": True}]
    assert city["wechat_configs"] == [{"send_resolved": True, "to_party": "1", "agent_id": "1000002"}]
    assert set(receivers["seat-street-YX-S01"]) == {"name", "webhook_configs"}
    g = config["global"]
    assert g["smtp_smarthost"] == "smtp.example.org:587" and g["smtp_from"] == "kaifong@example.org"
    assert g["wechat_api_corp_id"] == "ww-example" and g["wechat_api_url"] == "https://qyapi.weixin.qq.com/cgi-bin/"
    assert g["wechat_api_secret"] == am.WECHAT_SECRET_PLACEHOLDER  # 0.25 has no *_file form
    route = config["route"]
    assert route["receiver"] == "seat-city" and route["group_by"] == ["incident"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("5s", "30s", "10m")
    assert "match" not in json.dumps(config).replace("matchers", "")  # never the deprecated match:


def test_inhibit_rules_shape() -> None:
    rules = am.render(am.example_seats())["inhibit_rules"]
    name = f'alertname="{am.ALERTNAME}"'
    assert [(r["source_matchers"], r["target_matchers"]) for r in rules] == [
        ([name, 'level="city"'], [name, 'level=~"district|street|grid"']),
        ([name, 'level="district"'], [name, 'level=~"street|grid"']),
        ([name, 'level="street"'], [name, 'level=~"grid"']),
    ]
    assert all(r["equal"] == ["incident", "exercise"] for r in rules)
    assert all(set(r) == {"source_matchers", "target_matchers", "equal"} for r in rules)


# -- the generator's rules --------------------------------------------------------------------
def small(**extra: Any) -> dict[str, Any]:
    seats: dict[str, Any] = {"version": 1, "seats": [
        {"id": "city", "level": "city", "receivers": [hook("http://x/city")]},
        {"id": "district-YX", "level": "district", "jurisdiction": {"districts": ["越秀区"]},
         "receivers": [hook("http://x/yx")]},
    ]}
    seats.update(extra)
    return seats


def test_ids_with_dots_and_colons_and_odd_district_names_route(tmp_path: Path) -> None:
    odd = '越"秀\\区'  # a quote and a backslash: the matchers must quote and escape them
    seats = small()
    seats["seats"] += [
        {"id": "street:YX.S01", "level": "street", "jurisdiction": {"districts": [odd]},
         "receivers": [hook("http://x/s")]},
        {"id": "district:YXxS01", "level": "district", "jurisdiction": {"districts": [odd]},
         "receivers": [hook("http://x/d")]},
    ]
    config = write_config(tmp_path, seats)
    assert routes_to(config, **escalation("street:YX.S01", "street", odd)) == ["seat-street:YX.S01"]
    assert routes_to(config, **escalation("district:YXxS01", "district", odd)) == ["seat-district:YXxS01"]
    # A street escalation handed to the district seat: the street level's guard `street:YX\.S01`
    # must not match `district:YXxS01`'s look-alike, so it falls through to the seat-only branch.
    assert routes_to(config, **escalation("district:YXxS01", "street", odd)) == ["seat-district:YXxS01"]


def test_default_receiver_without_a_city_seat_and_seats_without_real_receivers(tmp_path: Path) -> None:
    seats = small()
    seats["seats"][0]["receivers"] = [hook("http://x/city-ex", exercise=True)]  # city: exercises only
    config = am.render(seats)
    assert config["route"]["receiver"] == "seat-district-YX"
    assert "seat-city" not in {r["name"] for r in config["receivers"]}
    path = write_config(tmp_path, seats)
    assert routes_to(path, **escalation("city", "city")) == ["seat-district-YX"]
    assert routes_to(path, **escalation("city", "city", exercise=True)) == ["seat-city-exercise"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["seats"].append(copy.deepcopy(s["seats"][0])), "appears twice"),
    (lambda s: s["seats"][0].update(id="city seat"), "ids are"),
    (lambda s: s["seats"][0].update(level="province"), "is not one of"),
    (lambda s: s["seats"][0]["receivers"].append({"type": "sms", "to": "1"}), "receiver type"),
    (lambda s: s["seats"][0]["receivers"].append({"type": "email", "to": "a@b"}), "alertmanager.smtp"),
    (lambda s: s["seats"][0]["receivers"].append({"type": "wechat", "to_party": "1"}), "agent_id"),
    (lambda s: s["seats"][0]["receivers"].append({"type": "webhook"}), "needs a url"),
    (lambda s: s["seats"].append({"id": "city-exercise", "level": "city", "receivers": []}), "clash"),
    (lambda s: s.update(version=2), "version"),
    (lambda s: s.update(seats=[]), "no `seats`"),
    (lambda s: [r.update(exercise=True) for x in s["seats"] for r in x["receivers"]], "no seat has a real"),
])
def test_render_refuses_bad_seat_files(change: Any, message: str) -> None:
    seats = small()
    change(seats)
    with pytest.raises(ValueError, match=message):
        am.render(seats)


def test_wechat_secret_inline_and_smtp_password_file(tmp_path: Path) -> None:
    seats = small(alertmanager={"smtp": {"smarthost": "smtp:25", "from": "a@b", "auth_username": "u",
                                         "auth_password_file": "/run/secrets/smtp", "require_tls": False},
                                "wechat": {"corp_id": "ww", "api_secret": "s3cret"}})
    seats["seats"][0]["receivers"] += [{"type": "email", "to": ["a@x", "b@x"]},
                                       {"type": "wechat", "to_user": "@all", "agent_id": 7}]
    config = am.render(seats)
    assert config["global"]["smtp_auth_password_file"] == "/run/secrets/smtp"
    assert config["global"]["wechat_api_secret"] == "s3cret"
    assert "wechat_api_url" not in config["global"]  # Alertmanager's default API URL
    assert config["receivers"][0]["email_configs"] == [{"to": "a@x, b@x", "send_resolved": True}]
    assert am.WECHAT_SECRET_PLACEHOLDER not in am.dump(config)
    write_config(tmp_path, seats)  # amtool accepts it


def test_street_seats_nest_under_their_district_when_derivable(example: dict[str, Any]) -> None:
    config = am.render(example)
    street = next(r for r in config["route"]["routes"] if r["matchers"][0] == 'level="street"')
    districts = [r["matchers"] for r in street["routes"]]
    assert len(districts) == 11 and all(len(m) == 1 and m[0].startswith('district="') for m in districts)
    assert sum(len(r["routes"]) for r in street["routes"]) == 176
    assert not any(r["matchers"][0] == 'level="grid"' for r in config["route"]["routes"])  # no grid seats
    # A seat whose streets span two districts hangs directly under its level.
    seats = small()
    seats["seats"].append({"id": "s2", "level": "street", "jurisdiction": {"streets": ["YX-S01", "LW-S01"]},
                           "receivers": [hook("http://x/s2")]})
    node = next(r for r in am.render(seats)["route"]["routes"] if r["matchers"][0] == 'level="street"')
    assert node["routes"] == [{"receiver": "seat-s2", "matchers": ['seat="s2"']}]


# -- live: the helpers and a real Alertmanager ------------------------------------------------
def test_live_alertmanager_delivers_and_resolves(tmp_path: Path) -> None:
    with webhook_sink() as (sink, received):
        seats = small()
        seats["seats"][0]["receivers"] = [hook(f"{sink}/hooks/city"),
                                          hook(f"{sink}/hooks/city-exercise", exercise=True)]
        config = write_config(tmp_path, seats, group_wait="1s", group_interval="1s", repeat_interval="1h")
        with running_alertmanager(config, tmp_path) as url:
            now = datetime.now(UTC)
            alert = {"labels": escalation("city", "city", incident="inc-live"),
                     "annotations": {"summary": "ring 3 missed", "console": "http://console/inc-live"},
                     "startsAt": now.isoformat()}
            drill = {"labels": escalation("city", "city", exercise=True, incident="inc-drill"),
                     "startsAt": now.isoformat()}
            post_alerts(url, [alert, drill])

            def bodies(path: str, status: str) -> list[dict[str, Any]]:
                return [r["body"] for r in received if r["path"] == path and r["body"]["status"] == status]

            firing = wait_for(lambda: bodies("/hooks/city", "firing"), timeout=8, what="the firing notification")
            assert firing[0]["receiver"] == "seat-city"
            assert firing[0]["groupLabels"] == {"incident": "inc-live"}
            assert [a["labels"]["incident"] for a in firing[0]["alerts"]] == ["inc-live"]
            assert firing[0]["alerts"][0]["annotations"]["console"] == "http://console/inc-live"
            drilled = wait_for(lambda: bodies("/hooks/city-exercise", "firing"), timeout=8, what="the exercise")
            assert drilled[0]["receiver"] == "seat-city-exercise"

            alert["endsAt"] = datetime.now(UTC).isoformat()
            post_alerts(url, [alert])
            resolved = wait_for(lambda: bodies("/hooks/city", "resolved"), timeout=8, what="the resolved notification")
            assert resolved[0]["alerts"][0]["status"] == "resolved"
        # The exercise never reached the real hook, the real alert never the exercise hook.
        assert all(a["labels"]["exercise"] == "false" for r in received if r["path"] == "/hooks/city"
                   for a in r["body"]["alerts"])
        assert all(a["labels"]["exercise"] == "true" for r in received if r["path"] == "/hooks/city-exercise"
                   for a in r["body"]["alerts"])


# -- the HA deployments -----------------------------------------------------------------------
def test_compose_runs_a_clustered_pair_the_workers_push_to() -> None:
    services = yaml.safe_load(COMPOSE.read_text("utf-8"))["services"]
    pair = {n: s for n, s in services.items() if n.startswith("alertmanager")}
    assert sorted(pair) == ["alertmanager-1", "alertmanager-2"]
    for name, service in pair.items():
        other = next(n for n in pair if n != name)
        assert service["image"] == "prom/alertmanager:v0.25.0"
        flags = dict(f.split("=", 1) for f in service["command"])
        assert flags["--cluster.peer"] == f"{other}:9094" and flags["--cluster.listen-address"].endswith(":9094")
        assert flags["--web.listen-address"] == ":9093"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        source = mounts[flags["--config.file"]]
        assert (COMPOSE.parent / source).resolve() == SHIPPED.resolve()
        assert service["volumes"][0].endswith(":ro")
        assert "/-/ready" in " ".join(service["healthcheck"]["test"])
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    assert workers
    for worker in workers.values():
        urls = worker["environment"]["KAIFONG_ALERTMANAGER_URLS"].split(",")
        assert urls == [f"http://{n}:9093" for n in sorted(pair)]


def test_kubernetes_statefulset_peers_and_the_workers_urls() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "alertmanager.yaml").read_text("utf-8")) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("Service", "alertmanager-peers"), ("Service", "alertmanager"),
                     ("StatefulSet", "alertmanager"), ("PodDisruptionBudget", "alertmanager")}
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = by["StatefulSet", "alertmanager"]
    spec = sts["spec"]
    namespace = sts["metadata"]["namespace"]
    headless = by["Service", spec["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert {(p["port"], p["protocol"]) for p in headless["ports"]} >= {(9094, "TCP"), (9094, "UDP")}
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    for doc in docs:
        selector = doc["spec"].get("selector", {})
        assert selector.get("matchLabels", selector).items() <= labels.items(), doc["metadata"]["name"]
    assert by["PodDisruptionBudget", "alertmanager"]["spec"]["maxUnavailable"] == 1
    assert [p["port"] for p in by["Service", "alertmanager"]["spec"]["ports"]] == [9093]
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "prom/alertmanager:v0.25.0"
    pods = [f"alertmanager-{i}.{spec['serviceName']}.{namespace}.svc" for i in range(spec["replicas"])]
    peers = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--cluster.peer=")]
    assert peers == [f"{p}:9094" for p in pods]
    # The config file the server reads is the generated ConfigMap's key.
    config_file = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--config.file="))
    mount = next(m for m in container["volumeMounts"] if config_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = yaml.safe_load((K8S / "alertmanager-config.yaml").read_text("utf-8"))
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_file.rsplit("/", 1)[1] in config_map["data"]
    assert config_map["metadata"]["namespace"] == namespace
    # The workers push to every pod, by its stable name.
    worker_config = yaml.safe_load((K8S / "configmap.yaml").read_text("utf-8"))["data"]
    assert worker_config["KAIFONG_ALERTMANAGER_URLS"].split(",") == [f"http://{p}:9093" for p in pods]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    assert {"alertmanager.yaml", "alertmanager-config.yaml"} <= set(kustomization["resources"])
