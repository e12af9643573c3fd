"""Deployment artefacts (deploy/): Compose, Kubernetes manifests, the Dockerfile, the guide.

Validated statically (no Docker engine, no cluster, no Kafka here): `docker-compose config`,
Kubernetes' own JSON schemas (kubernetes-validate) for built-in kinds, structural checks for
the CRD kinds, promtool for the PrometheusRules, and cross-checks against the code they
describe (the topic catalogue, the settings, the worker's web routes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
RULES_DIR = DEPLOY / "prometheus" / "rules"
GUIDE = DEPLOY / "README.md"

SECRET_VARS = ("REDIS_PASSWORD", "KAIFONG_API_TOKEN", "GRAFANA_ADMIN_PASSWORD")
BUILTIN_KINDS = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "StatefulSet"}
#: A mainstream supported release and the newest the installed kubernetes-validate ships.
K8S_FLOOR = "1.30.0"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
KNOWN_ENV = {env for env, _, _ in Settings.describe()}


# -- helpers ----------------------------------------------------------------------------------
def load_module(path: Path) -> ModuleType:
    """Import a generator script (deploy/k8s is not a package) by its path."""
    spec = importlib.util.spec_from_file_location(f"_deploy_{path.stem}", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))  # resolves << merge keys
    return data


def manifests(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    out: list[dict[str, Any]] = []
    for doc in docs:  # a `kind: List` (empty PrometheusRule file) holds its objects in items
        out.extend(doc.get("items", []) if doc.get("kind") == "List" else [doc])
    return out


def all_manifests() -> dict[str, list[dict[str, Any]]]:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return {p.name: manifests(p) for p in files}


def one(kind: str, file: str | None = None) -> dict[str, Any]:
    found = [d for name, docs in all_manifests().items() if file in (None, name) for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text("utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def worker_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("command") == ["worker"]}


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("the docker-compose binary is missing: .ci/run installs it "
                    "(Debian package docker-compose: apt-get install -y docker-compose)")
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("COMPOSE_")}
    return subprocess.run([binary, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text("utf-8").splitlines()
                                         if not line.lstrip().startswith("#")))
    stages: list[list[str]] = [[]]
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


# -- Compose ----------------------------------------------------------------------------------
def test_compose_config_validates_with_env_example(tmp_path: Path) -> None:
    ok = docker_compose("--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q")
    assert ok.returncode == 0, ok.stderr + ok.stdout
    ok = docker_compose("--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "--profile", "sim",
                        "config", "--services")
    assert ok.returncode == 0, ok.stderr
    assert {"kafka", "redis", "topics", "simulator", "prometheus", "grafana", "alertmanager-1",
            "alertmanager-2"} <= set(ok.stdout.split())
    # Without the secrets the file must refuse to render, not start Redis with no password.
    no_secrets = tmp_path / "empty.env"
    no_secrets.write_text("", "utf-8")
    empty = docker_compose("--env-file", str(no_secrets), "-f", str(COMPOSE), "config", "-q")
    assert empty.returncode != 0
    assert "REDIS_PASSWORD" in empty.stderr + empty.stdout


def test_compose_services() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, combined
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("zookeeper" in str(s).lower() for s in services.values())

    redis = services["redis"]
    assert redis["image"] == "redis:7.4-alpine"
    command = " ".join(redis["command"])
    assert "--requirepass ${REDIS_PASSWORD" in command
    assert "--appendonly yes" in command and "--appendfsync everysec" in command

    workers = worker_services(services)
    assert len(workers) == 2, sorted(workers)
    assert len({w["container_name"] for w in workers.values()}) == 2
    for name, worker in workers.items():
        assert worker["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile"}, name
        wenv = worker["environment"]
        assert wenv["KAIFONG_BROKER_URL"] == "kafka://kafka:9092"
        assert wenv["KAIFONG_PARTITIONS"] == "12" and wenv["KAIFONG_REPLICATION_FACTOR"] == "1"
        assert "${REDIS_PASSWORD" in wenv["KAIFONG_REDIS_URL"] and "@redis:6379" in wenv["KAIFONG_REDIS_URL"]
        assert wenv["KAIFONG_API_TOKEN"].startswith("${KAIFONG_API_TOKEN")
        assert wenv["KAIFONG_WEB_HOST"] == "0.0.0.0"
        assert set(wenv) <= KNOWN_ENV, set(wenv) - KNOWN_ENV
        assert "http://127.0.0.1:6066/ready" in " ".join(worker["healthcheck"]["test"])
        assert worker["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                        "redis": {"condition": "service_healthy"},
                                        "topics": {"condition": "service_completed_successfully"}}

    topics = services["topics"]
    assert topics["command"] == ["topics", "--create"]
    assert topics["environment"]["KAIFONG_PARTITIONS"] == "12"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"

    sim = services["simulator"]
    assert sim["profiles"] == ["sim"]
    assert sim["command"] == ["simulate", "--accelerate", "1"]

    prometheus = services["prometheus"]
    assert prometheus["image"] == "prom/prometheus:v2.55.1"
    assert "../prometheus/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    assert any(v.startswith("../prometheus/") and ":/etc/prometheus/prometheus.yml" in v for v in prometheus["volumes"])
    grafana = services["grafana"]
    assert grafana["image"] == "grafana/grafana:11.3.0"
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert any(v.startswith("../grafana/dashboards:") for v in grafana["volumes"])

    # Every stateful service keeps its data in a declared named volume.
    declared = set(compose()["volumes"])
    for name, path in (("kafka", "/var/lib/kafka/data"), ("redis", "/data"), ("prometheus", "/prometheus"),
                       ("grafana", "/var/lib/grafana"), ("alertmanager-1", "/alertmanager"),
                       ("alertmanager-2", "/alertmanager")):
        mounts = [v.split(":") for v in services[name]["volumes"]]
        assert any(src in declared and dst == path for src, dst, *_ in mounts), (name, mounts)


def test_compose_prometheus_scrapes_the_workers() -> None:
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}  # target -> source
    config_file = (COMPOSE_DIR / mounts["/etc/prometheus/prometheus.yml"]).resolve()
    rules_dir = (COMPOSE_DIR / mounts["/etc/prometheus/rules"]).resolve()
    # A missing bind-mount source becomes an empty directory and Prometheus will not start.
    assert config_file.is_file(), f"{config_file} (deploy/prometheus/) is missing"
    assert rules_dir == RULES_DIR.resolve() and sorted(rules_dir.glob("*.yml"))
    config = yaml.safe_load(config_file.read_text("utf-8"))
    assert any(r.startswith("/etc/prometheus/rules/") for r in config["rule_files"]), config["rule_files"]
    targets = {t for job in config["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"
               for sc in job.get("static_configs", []) for t in sc["targets"]}
    for name, worker in worker_services(services).items():
        assert {f"{name}:6066", f"{worker['container_name']}:6066"} & targets, (name, targets)


def test_compose_env_example_holds_placeholders_only() -> None:
    values = env_example()
    assert set(SECRET_VARS) <= set(values)
    for key in SECRET_VARS:
        assert "CHANGE_ME" in values[key], key
    assert re.fullmatch(r"[A-Za-z0-9_]+", values["REDIS_PASSWORD"])  # URL-safe: it goes in redis://
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text("utf-8").split()


# -- Kubernetes -------------------------------------------------------------------------------
def test_kubernetes_builtin_kinds_validate_against_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: it is a test dependency (pip install kubernetes-validate)")
    versions = (K8S_FLOOR, kubernetes_validate.latest_version())
    seen: set[str] = set()
    for name, docs in all_manifests().items():
        for doc in docs:
            if doc["kind"] not in BUILTIN_KINDS:
                continue
            seen.add(doc["kind"])
            for version in versions:
                try:  # strict: an unknown field (a typo) is an error, not silently dropped
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} against {version}: {exc.message}")
    assert seen == BUILTIN_KINDS


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.yaml"}
    assert set(kustomization["resources"]) == files
    # Applying the placeholder Secret on every deploy would overwrite the real one.
    assert "secret.yaml" not in kustomization["resources"]
    assert [i["name"] for i in kustomization["images"]] == [container(one("Deployment"))["image"]]
    kubectl = shutil.which("kubectl")
    if kubectl:  # kustomize is built into kubectl; the static check above stands without it
        built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert built.returncode == 0, built.stderr
        kinds = [d["kind"] for d in yaml.safe_load_all(built.stdout) if d]
        assert kinds.count("KafkaTopic") == len(CATALOGUE) and "Secret" not in kinds


def test_secret_template_has_placeholders_only() -> None:
    secret = one("Secret")
    assert secret["type"] == "Opaque" and secret["metadata"]["namespace"] == "kaifong"
    assert set(secret["stringData"]) == {"KAIFONG_REDIS_URL", "KAIFONG_API_TOKEN"}
    assert all("CHANGE_ME" in v for v in secret["stringData"].values())
    assert secret["stringData"]["KAIFONG_REDIS_URL"].startswith("rediss://")  # TLS by default


def test_configmap_settings_are_real_and_agree_with_the_topics() -> None:
    data = one("ConfigMap", "configmap.yaml")["data"]
    secret_keys = set(one("Secret")["stringData"])
    assert set(data) <= KNOWN_ENV, set(data) - KNOWN_ENV  # a typo would be silently ignored
    assert not set(data) & secret_keys  # secrets stay in the Secret
    settings = Settings.from_env({**data, "KAIFONG_REDIS_URL": "redis://x:6379/0"})  # parses every value
    assert settings.producer_acks == "all"
    assert settings.replication_factor == 3
    topics = {t["spec"]["topicName"]: t["spec"] for t in manifests(K8S / "kafkatopics.yaml")}
    for spec in CATALOGUE:
        # A worker refuses to start when a topic's partitions differ from KAIFONG_PARTITIONS.
        assert topics[spec.name(settings)]["partitions"] == spec.partitions(settings)
        assert topics[spec.name(settings)]["replicas"] == settings.replication_factor


def test_deployment_is_production_shaped() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c = container(deployment)
    assert deployment["metadata"]["name"] == "kaifong-worker" and spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert c["args"] == ["worker"]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["enableServiceLinks"] is False  # else KAIFONG_WORKER_* variables appear from the Service
    assert {x["topologyKey"] for x in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    # The data dir is a writable emptyDir at the path the worker is told to use.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert mounts["data"] == "/var/lib/kaifong" == one("ConfigMap", "configmap.yaml")["data"]["KAIFONG_DATA_DIR"]
    assert set(mounts) <= empty_dirs
    assert {e["name"]: e["value"] for e in c["env"]} == {"KAIFONG_WEB_HOST": "0.0.0.0"}
    refs = {next(iter(r)): next(iter(r.values()))["name"] for r in c["envFrom"]}
    assert refs == {"configMapRef": one("ConfigMap", "configmap.yaml")["metadata"]["name"],
                    "secretRef": one("Secret")["metadata"]["name"]}

    service = one("Service", "service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "web", "port": 6066, "targetPort": "web", "protocol": "TCP"}]
    pdb = one("PodDisruptionBudget", "pdb.yaml")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 2
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_probes_and_scrapes_point_at_real_endpoints() -> None:
    web = (ROOT / "agents" / "web" / "server.py").read_text("utf-8")
    for path in ("/health", "/ready", "/metrics"):
        assert f'@app.page("{path}")' in web, f"the worker serves no {path}"
    c = container(one("Deployment"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    web_port = one("ConfigMap", "configmap.yaml")["data"]["KAIFONG_WEB_PORT"]
    assert ports == {"web": Settings().web_port} and str(ports["web"]) == web_port
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")):
        assert c[probe]["httpGet"] == {"path": path, "port": "web"}, probe
    monitor = one("PodMonitor")
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("web", "/metrics")]
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["metadata"]["namespace"] == "kaifong"
    # The Dockerfile's HEALTHCHECK and Compose's healthchecks are Python one-liners: they compile
    # and name the right route.
    health = next(i for stage in dockerfile_stages() for i in stage if i.upper().startswith("HEALTHCHECK"))
    code = json.loads(health[health.index("CMD") + 3:].strip())
    assert code[:2] == ["python", "-c"] and "/health" in code[2]
    compile(code[2], "HEALTHCHECK", "exec")
    for name, worker in worker_services(compose()["services"]).items():
        test = worker["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and "/ready" in test[3], name
        compile(test[3], name, "exec")


def test_crd_kinds_are_structurally_valid() -> None:
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"]
    for rule in manifests(K8S / "prometheusrule.yaml"):
        assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
        assert DNS1123_SUBDOMAIN.match(rule["metadata"]["name"]) and rule["metadata"]["namespace"]
        names = [g["name"] for g in rule["spec"]["groups"]]
        assert len(names) == len(set(names)), f"{rule['metadata']['name']}: repeated group names"
        for group in rule["spec"]["groups"]:
            assert group["rules"], group["name"]
            for r in group["rules"]:
                assert isinstance(r["expr"], str | int) and (("alert" in r) != ("record" in r)), r
    for topic in manifests(K8S / "kafkatopics.yaml"):
        assert (topic["apiVersion"], topic["kind"]) == ("kafka.strimzi.io/v1beta2", "KafkaTopic")
        meta, spec = topic["metadata"], topic["spec"]
        assert DNS1123_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253
        assert meta["namespace"] and meta["labels"]["strimzi.io/cluster"]
        assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1
        assert isinstance(spec["replicas"], int) and spec["replicas"] >= 1
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec["config"].items())


def test_every_catalogue_topic_has_its_kafkatopic() -> None:
    gen = load_module(K8S / "gen_topics.py")
    settings = Settings(partitions=gen.PARTITIONS, replication_factor=gen.REPLICAS, topic_prefix=gen.PREFIX)
    topics = {t["spec"]["topicName"]: t["spec"] for t in manifests(K8S / "kafkatopics.yaml")}
    assert set(topics) == {spec.name(settings) for spec in CATALOGUE}
    assert gen.PARTITIONS == 24 and gen.REPLICAS == 3 and gen.MIN_INSYNC_REPLICAS == 2
    for spec in CATALOGUE:
        topic = topics[spec.name(settings)]
        assert topic["partitions"] == spec.partitions(settings)
        assert topic["replicas"] == 3
        assert topic["config"] == {**spec.configs(), "min.insync.replicas": "2"}
    # The registry and the incident state are compacted (latest value per key, kept forever).
    for suffix in ("units.registry.v1", "incidents.state.v1"):
        assert topics[gen.PREFIX + suffix]["config"]["cleanup.policy"] == "compact"


def test_kafkatopics_yaml_is_what_the_generator_writes() -> None:
    gen = load_module(K8S / "gen_topics.py")
    assert (K8S / "kafkatopics.yaml").read_text("utf-8") == gen.render(), \
        "deploy/k8s/kafkatopics.yaml is stale: run .venv/bin/python deploy/k8s/gen_topics.py"


def test_prometheusrule_holds_every_rule_group(tmp_path: Path) -> None:
    gen = load_module(K8S / "gen_prometheusrule.py")
    assert (K8S / "prometheusrule.yaml").read_text("utf-8") == gen.render(), \
        "deploy/k8s/prometheusrule.yaml is stale: run .venv/bin/python deploy/k8s/gen_prometheusrule.py"
    rules = {r["metadata"]["name"]: r for r in manifests(K8S / "prometheusrule.yaml")}
    files = sorted(RULES_DIR.glob("*.yml"))
    assert len(rules) == len(files)  # one PrometheusRule per rule file (none while there are none)
    for path in files:
        source = yaml.safe_load(path.read_text("utf-8"))["groups"]
        rule = rules[gen.resource_name(path)]
        for group in source:  # every group of every rule file, unchanged
            assert group in rule["spec"]["groups"], f"{path.name}: group {group['name']} missing"
        assert len(rule["spec"]["groups"]) == len(source)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: .ci/run installs it (Debian package prometheus)")
    for name, rule in rules.items():  # what the operator hands Prometheus must load
        extracted = tmp_path / f"{name}.yml"
        extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False), "utf-8")
        checked = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True,
                                 timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


# -- Dockerfile -------------------------------------------------------------------------------
def test_dockerfile_builds_a_wheel_and_runs_it_as_non_root() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    args = dict(a.split(None, 1)[1].split("=", 1) for a in preamble if a.upper().startswith("ARG "))
    builder, runtime = stages[0], stages[-1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], runtime[0].split()[1])
    assert base == "python:3.11-slim"
    builder_alias = builder[0].split()[-1]
    assert any("pip wheel --no-deps" in i for i in builder)

    def instr(name: str) -> list[str]:
        return [i.split(None, 1)[1] for i in runtime if i.split(None, 1)[0].upper() == name]

    users = instr("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == "10001"
    # Nothing of the source tree is copied into the runtime stage: only the builder's wheel.
    for copy in instr("COPY") + instr("ADD"):
        assert copy.startswith(f"--from={builder_alias} /wheels"), copy
    assert not any(re.match(r"(--\S+\s+)*\.\s", c) for c in instr("COPY") + instr("ADD"))
    assert instr("WORKDIR")[-1] == "/home/kaifong"
    assert instr("HEALTHCHECK")
    assert json.loads(instr("ENTRYPOINT")[-1]) == ["kaifong"]
    assert json.loads(instr("CMD")[-1]) == ["worker"]
    assert instr("EXPOSE") == ["6066"]
    env = " ".join(instr("ENV"))
    assert "KAIFONG_WEB_HOST=0.0.0.0" in env and "KAIFONG_DATA_DIR=/var/lib/kaifong" in env
    assert any("/var/lib/kaifong" in r and "10001" in r for r in instr("RUN"))  # owned by the user
    ignored = set(DOCKERIGNORE.read_text("utf-8").split())
    assert {".venv", ".git", ".pytest_cache", "test-artifacts", "build", "*.egg-info"} <= ignored


# -- the guide --------------------------------------------------------------------------------
def test_guide_commands_and_retention_table_match_the_catalogue() -> None:
    guide = GUIDE.read_text("utf-8")
    assert "docker compose -f deploy/compose/compose.yaml up -d --build" in guide
    assert "kubectl apply -k deploy/k8s" in guide
    assert re.search(r"docker build -f deploy/docker/Dockerfile( -t \S+)? \.$", guide, re.M)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `kaifong\.([a-z.]+v\d+)` \|.*$", guide, re.M)}
    for spec in CATALOGUE:
        row = rows.get(spec.suffix)
        assert row, f"deploy/README.md has no retention row for {spec.suffix}"
        if spec.compacted:
            assert "compact" in row, row
        else:
            assert f"`retention.ms={spec.retention_ms}`" in row, row
