"""Prometheus rules, their promtool unit tests, the runbook and the Grafana dashboards.

Needs ``promtool`` on PATH (the Debian package ``prometheus``; ``.ci/run`` installs it). Without
it these tests fail — they never skip — because unchecked alert rules are how a command centre
ends up with alerts that cannot fire.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kaifong.streams import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTS_FILE = RULES_DIR / "kaifong-alerts.yml"
RECORDING_FILE = RULES_DIR / "kaifong-recording.yml"
RUNBOOK = PROMETHEUS / "RUNBOOK.md"
RUNBOOK_URL = "https://github.com/kaifong/kaifong/blob/main/deploy/prometheus/RUNBOOK.md#"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Labels Prometheus adds to every scraped series (target labels), and `le` on histogram buckets.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning"}

_METRIC = re.compile(r"(?<![\w:.])kaifong_[a-z_]+")
_RECORDED = re.compile(r"(?<![\w:.])kaifong:[a-z0-9_:]+")
_SELECTOR = re.compile(r"(?<![\w:.])(kaifong_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"""(\w+)\s*(=~|!~|!=|=)\s*(["'])(.*?)\3""")


# -- helpers ------------------------------------------------------------------------------------


def _load_exprs_module() -> ModuleType:
    """``deploy/grafana/exprs.py`` (stdlib only, not installed), loaded from its file."""
    spec = importlib.util.spec_from_file_location("kaifong_grafana_exprs", GRAFANA / "exprs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXPRS = _load_exprs_module()


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """``(dashboard file, panel title, expr)`` for every panel target of every kaifong dashboard,
    Grafana variables replaced (``$district`` → ``.*``, ``$__rate_interval``/``$__range`` → ``5m``)."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARDS:
        out.extend(_EXPRS.exprs(path))
    return out


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install the Debian package `prometheus` "
                    "(`apt-get install prometheus`; .ci/run installs it when missing)")
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=False)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _yaml(path)["groups"] for rule in group["rules"]]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules(ALERTS_FILE) if "alert" in rule]


def _alert_names() -> set[str]:
    return {rule["alert"] for rule in _alert_rules()}


def _recorded_names() -> set[str]:
    return {rule["record"] for path in RULE_FILES for rule in _rules(path) if "record" in rule}


@cache
def _catalogue() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name the workers expose → (metric type, label names), from kaifong.streams.metrics."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            if family.type == "counter":
                out[family.name + "_total"] = ("counter", labels)
            elif family.type == "histogram":
                out[family.name + "_bucket"] = ("histogram", labels | {"le"})
                out[family.name + "_sum"] = ("histogram", labels)
                out[family.name + "_count"] = ("histogram", labels)
            else:
                out[family.name] = (family.type, labels)
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every rule of every rules file."""
    return [(f"{path.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
            for path in RULE_FILES for rule in _rules(path)]


def _test_exprs() -> list[tuple[str, str]]:
    """(where, expr-or-series) of the promtool unit tests: input series and promql_expr_test."""
    out: list[tuple[str, str]] = []
    for path in RULE_TEST_FILES:
        for case in _yaml(path)["tests"]:
            where = f"{path.name}: {case.get('name', '?')}"
            out.extend((where, s["series"]) for s in case.get("input_series", []))
            out.extend((where, t["expr"]) for t in case.get("promql_expr_test", []))
    return out


def _all_exprs() -> list[tuple[str, str]]:
    return [*_rule_exprs(), *_test_exprs(), *((f"{d}: {t}", e) for d, t, e in dashboard_exprs())]


# -- the files are there --------------------------------------------------------------------------


def test_deploy_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {"kaifong-recording.yml", "kaifong-alerts.yml"}
    assert len(RULE_TEST_FILES) >= 2, "promtool unit tests in deploy/prometheus/rules/tests/"
    assert {p.name for p in DASHBOARDS} == {"kaifong-sre.json", "kaifong-sla.json"}
    for path in (PROMETHEUS / "prometheus.yml", PROMETHEUS / "prometheus-compose.yml", RUNBOOK,
                 GRAFANA / "provisioning" / "datasources" / "prometheus.yml",
                 GRAFANA / "provisioning" / "dashboards" / "kaifong.yml"):
        assert path.is_file(), path


# -- promtool -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    result = _run("check", "rules", "--lint=all", "--lint-fatal", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    result = _run("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_check_config(name: str) -> None:
    result = _run("check", "config", PROMETHEUS / name)
    assert result.returncode == 0, result.stdout + result.stderr
    if name == "prometheus.yml":  # the rules next to it are found and valid
        assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr


def test_scrape_configs() -> None:
    for name, targets, rules in (("prometheus.yml", ["localhost:6066", "localhost:6067"], "rules/*.yml"),
                                 ("prometheus-compose.yml", ["kaifong-worker-1:6066", "kaifong-worker-2:6066"],
                                  "/etc/prometheus/rules/*.yml")):
        config = _yaml(PROMETHEUS / name)
        assert config["global"]["scrape_interval"] == "15s"
        assert config["global"]["evaluation_interval"] == "15s"
        assert config["rule_files"] == [rules]
        (job,) = config["scrape_configs"]
        assert job["job_name"] == "kaifong"  # the alerts select up{job="kaifong"}
        assert job["static_configs"] == [{"targets": targets}]
    assert "file_sd_configs:" in (PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8")


# -- alerts: tests, metadata, runbook ----------------------------------------------------------------


def test_every_alert_fires_in_a_test_and_stays_quiet_in_another() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in _yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = _alert_names()
    assert len(alerts) >= 14
    assert alerts - fires == set(), "alerts without a test case where they fire"
    assert alerts - quiet == set(), "alerts without a test case where they do not fire"
    assert (fires | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_alerts_have_severity_summary_description_runbook() -> None:
    for rule in _alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Kaifong[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes["summary"].strip(), name
        assert "{{" in notes["description"], f"{name}: the description shows no value or label"
        assert notes["runbook_url"] == RUNBOOK_URL + name.lower(), name


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"^## +(\S+) *$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_runbook_has_a_section_per_alert() -> None:
    sections = _runbook_sections()
    alerts = _alert_names()
    anchors = {name.lower() for name in sections}  # GitHub's anchor of "## KaifongX" is #kaifongx
    assert {name.lower() for name in alerts} <= anchors
    assert set(sections) == alerts, "one section per alert, named exactly as the alert"
    for name, body in sections.items():
        for part in ("**Meaning.**", "**Impact on the command centre.**", "**First checks.**", "**Mitigation.**"):
            assert part in body, f"RUNBOOK.md#{name.lower()} lacks {part}"


def test_runbook_names_existing_dashboard_panels() -> None:
    titles: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        titles[board["title"]] = {title for _, title, _ in _EXPRS.exprs(path)}
    every = set().union(*titles.values())
    text = " ".join(RUNBOOK.read_text(encoding="utf-8").split())
    refs = re.findall(r"(?<![*\w])\*(?!\*)([^*]+?)(?<!\*)\*(?![*\w])", text)
    assert len(refs) >= 20
    for ref in refs:
        board, sep, panel = ref.partition(" → ")
        if sep and board in titles:
            assert panel in titles[board], f"RUNBOOK.md names a missing panel: {ref}"
        else:
            assert ref in every, f"RUNBOOK.md names a missing panel: {ref}"


def test_sla_alerts_exclude_exercises() -> None:
    # The burn-rate alerts read kaifong:ring_breach_city:*; every rule behind those reads
    # exercise="false" only.
    for rule in _rules(RECORDING_FILE):
        if rule.get("record", "").startswith(("kaifong:ring_breach", "kaifong:ring_compliance")):
            selectors = re.findall(r"kaifong_ring_outcomes_total\{([^}]*)\}", rule["expr"])
            assert selectors, rule["record"]
            assert all('exercise="false"' in s for s in selectors), rule["record"]
    for rule in _alert_rules():
        if rule["alert"].startswith("KaifongRingSLA"):
            assert "kaifong:ring_breach_city:" in rule["expr"]
            assert "kaifong_ring_outcomes_total" not in rule["expr"]


# -- metric names and labels against the worker's catalogue ---------------------------------------------


def test_every_metric_in_rules_tests_and_dashboards_is_in_the_catalogue() -> None:
    catalogue = _catalogue()
    assert "kaifong_worker_ready" in catalogue and "kaifong_response_seconds_bucket" in catalogue
    recorded = _recorded_names()
    seen: set[str] = set()
    for where, expr in _all_exprs():
        for name in _METRIC.findall(expr):
            assert name in catalogue, f"{where}: {name} is not a metric kaifong exposes"
            seen.add(name)
        for name in _RECORDED.findall(expr):
            assert name in recorded, f"{where}: {name} is not recorded by any rule"
    # Non-vacuous: the rules and dashboards between them read most of the catalogue.
    assert len(seen) >= 30, sorted(seen)


def test_label_matchers_use_the_metrics_labels() -> None:
    catalogue = _catalogue()
    checked = 0
    for where, expr in _all_exprs():
        for name, body in _SELECTOR.findall(expr):
            _, labels = catalogue[name]
            for label, op, _quote, value in _MATCHER.findall(body):
                assert label in labels | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
                if label == "exercise":
                    assert value in {"true", "false"}, f"{where}: exercise={value!r}"
                if label == "ring" and op == "=":
                    assert value in {"1", "2", "3", "4", "5"}, f"{where}: ring={value!r}"
                checked += 1
    assert checked >= 50


# -- Grafana ----------------------------------------------------------------------------------------


def test_dashboard_exprs_helper() -> None:
    substitute = _EXPRS.substitute
    assert substitute('x{district=~"$district"}[$__rate_interval]') == 'x{district=~".*"}[5m]'
    assert substitute('x{district=~"${district}"}[${__range}]') == 'x{district=~".*"}[5m]'
    rows = dashboard_exprs()
    assert {d for d, _, _ in rows} == {p.name for p in DASHBOARDS}
    assert len(rows) >= 50
    for dashboard, title, expr in rows:
        assert expr.strip(), f"{dashboard} / {title}: a target without expr"
        assert "$" not in expr, f"{dashboard} / {title}: unreplaced variable in {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["schemaVersion"] == 39
    assert board["uid"] == path.stem
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    district = variables["district"]
    assert district["type"] == "query"
    assert district["query"]["query"] == "label_values(kaifong_ring_outcomes_total, district)"
    assert district["includeAll"] and district["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # Panel titles are how the runbook points at them: unique within a dashboard.
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no offline query checker; a rules file with every expression is one.
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = _run("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_sla_dashboard_covers_the_command_centre_views() -> None:
    exprs = " ".join(e for d, _, e in dashboard_exprs() if d == "kaifong-sla.json")
    for needle in ("kaifong:ring_compliance:ratio_rate1d", "kaifong_response_seconds_bucket",
                   'outcome="breached"', "kaifong_escalations_total", "kaifong_escalations_unacknowledged",
                   "kaifong_drills_total", "kaifong_drill_response_seconds_bucket", "kaifong_units_available"):
        assert needle in exprs, needle
    exprs = " ".join(e for d, _, e in dashboard_exprs() if d == "kaifong-sre.json")
    for needle in ("kaifong_events_in_total", "kaifong_deadletters_total", "kaifong_processing_seconds_bucket",
                   "kaifong_consumer_lag", "kaifong_redis_call_seconds_bucket", "kaifong_redis_errors_total",
                   "kaifong_worker_ready", "kaifong_broker_tail_fetch_seconds"):
        assert needle in exprs, needle


def test_grafana_provisioning() -> None:
    (source,) = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "kaifong.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
