"""The deployment files: the compose stack validates, and its configuration is complete.

There is no Docker engine on this machine; Debian's docker-compose validates the file
(interpolation, schema, profiles) without one. The same processes run directly in tests/e2e.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

import infra.metrics
from infra.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "CARDINAL_SECRET": "0123456789abcdef0123456789abcdef",
    "CARDINAL_AUDIT_KEY": "ab" * 32,
    "CARDINAL_ADMIN_TOKEN": "a" * 32,
    "JWT_SECRET_KEY": "j" * 32,
    "METRICS_TOKEN": "m" * 32,
    "POSTGRES_PASSWORD": "pg",
    "RABBITMQ_PASSWORD": "mq",
    "GRAFANA_ADMIN_PASSWORD": "gf",
}


def _env_file(tmp_path: Path, **overrides: str) -> Path:
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={overrides[name]}" if name in overrides else line)
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make test` installs Debian's package"
    return subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_the_compose_file_validates_with_every_profile(tmp_path: Path) -> None:
    env = str(_env_file(tmp_path, **SECRETS))
    checked = _compose("--env-file", env, "config", "-q")
    assert checked.returncode == 0, checked.stderr
    monitored = _compose("--env-file", env, "--profile", "monitoring", "config")
    assert monitored.returncode == 0, monitored.stderr
    services = yaml.safe_load(monitored.stdout)["services"]
    assert set(services) == {
        "postgres",
        "rabbitmq",
        "migrate",
        "api",
        "relay",
        "projector",
        "ingest",
        "prometheus",
        "grafana",
    }
    optional = {name for name, service in services.items() if service.get("profiles")}
    assert optional == {"prometheus", "grafana"}
    assert services["grafana"]["profiles"] == ["monitoring"]


def test_the_stack_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    env = str(_env_file(tmp_path, **{**SECRETS, "CARDINAL_SECRET": ""}))
    checked = _compose("--env-file", env, "config", "-q")
    assert checked.returncode != 0
    assert "set CARDINAL_SECRET" in checked.stderr
    # Open metrics time every ballot (the API serves them on its public port).
    env = str(_env_file(tmp_path, **{**SECRETS, "METRICS_TOKEN": ""}))
    checked = _compose("--env-file", env, "config", "-q")
    assert checked.returncode != 0
    assert "set METRICS_TOKEN" in checked.stderr


def test_the_resolved_stack_wires_processes_health_and_order(tmp_path: Path) -> None:
    env = str(_env_file(tmp_path, **SECRETS))
    stack = yaml.safe_load(_compose("--env-file", env, "config").stdout)["services"]
    assert stack["migrate"]["command"] == ["migrate"]
    assert stack["api"]["command"] == ["api"]
    assert stack["relay"]["command"] == ["relay"]
    assert stack["projector"]["command"] == ["project"]
    assert stack["ingest"]["command"] == ["ingest"]
    assert stack["ingest"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "/api/ready" in " ".join(stack["api"]["healthcheck"]["test"])
    assert stack["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    environment = stack["api"]["environment"]
    assert environment["DATABASE_URL"] == "postgresql://cardinal@postgres:5432/cardinal"
    assert environment["PGPASSWORD"] == "pg"
    assert environment["AMQP_URL"] == "amqp://cardinal@rabbitmq:5672/"
    assert environment["AMQP_PASSWORD"] == "mq"
    assert environment["CARDINAL_ENV"] == "production"
    # A long-running process that dies is started again; the one-shot migration is not.
    for name, service in stack.items():
        expected = "no" if name == "migrate" else "unless-stopped"
        assert service.get("restart") == expected, (name, service.get("restart"))


@pytest.mark.parametrize(
    "password", ["q3ZJ+0a/Xy9kL2mN8pQr7sT1uV4wX6yZ0aBcDeFgHiI=", "p@ss w%rd/+=:#?"]
)
def test_any_password_works_in_the_compose_stack(tmp_path: Path, password: str) -> None:
    """`openssl rand -base64 32` (the deployment guide's generator) gives / + =: written
    into the URLs unencoded, they broke the stack with errors that never named the
    password (operator review M1). The passwords go beside the URLs instead."""
    passwords = {"POSTGRES_PASSWORD": password, "RABBITMQ_PASSWORD": password}
    env = str(_env_file(tmp_path, **{**SECRETS, **passwords}))
    resolved = _compose("--env-file", env, "config")
    assert resolved.returncode == 0, resolved.stderr
    stack = yaml.safe_load(resolved.stdout)["services"]
    assert stack["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    assert stack["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == password
    for name in ("migrate", "api", "relay", "projector", "ingest"):
        environment = {k: str(v) for k, v in stack[name]["environment"].items()}
        settings = Settings.from_env(environment)
        assert settings.database_url is not None
        assert settings.amqp_url is not None
        database = conninfo_to_dict(settings.database_url)
        assert (database["host"], database["port"], database["user"]) == (
            "postgres",
            "5432",
            "cardinal",
        )
        assert database["password"] == password
        broker = urlsplit(settings.amqp_url)
        assert (broker.hostname, broker.port, broker.username) == ("rabbitmq", 5672, "cardinal")
        assert unquote(broker.password or "") == password


class _Recording(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def _settings_variables() -> set[str]:
    """Every variable Settings.from_env reads, observed rather than listed by hand."""
    environ = _Recording()
    Settings.from_env(environ)
    return environ.asked


def test_every_setting_is_documented_and_passed_to_the_containers() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    variables = _settings_variables()
    assert {"DATABASE_URL", "WRITER_MAX_BATCH", "CARDINAL_NAMESPACE"} <= variables
    assert variables - documented == set()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    passed = set(compose["x-cardinal"]["environment"])
    # Only `cardinal serve` reads these: its embedded database and its process count.
    assert variables - passed == {"CARDINAL_DATA_DIR", "WEB_CONCURRENCY"}


def test_the_image_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users
    assert users[-1] not in ("root", "0")


def _metric_names(text: str) -> set[str]:
    found = set(re.findall(r"\b(cardinal_[a-z_]+)", text))
    suffixes = ("_bucket", "_count", "_sum", "_created")
    return {next((n[: -len(s)] for s in suffixes if n.endswith(s)), n) for n in found}


def _defined_metrics() -> set[str]:
    defined = set()
    for value in vars(infra.metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("cardinal_"):
            defined.add(name)
            defined.add(name + "_total")
    return defined


@pytest.mark.parametrize(
    "path",
    ["infra/monitoring/alerts.yml", "infra/monitoring/grafana/dashboards/cardinal.json"],
)
def test_monitoring_only_uses_metrics_the_code_exports(path: str) -> None:
    text = (ROOT / path).read_text()
    if path.endswith(".json"):
        json.loads(text)
    else:
        rules = yaml.safe_load(text)["groups"][0]["rules"]
        alerts = {rule["alert"] for rule in rules}
        assert {
            "CardinalHighErrorRate",
            "CardinalDatabaseDown",
            "CardinalBrokerDown",
            "CardinalProjectionLag",
            "CardinalQueueDepth",
            "CardinalSetAsideEvents",
            "CardinalIngestBacklog",
            "CardinalIngestRefusals",
            "CardinalIngestRefusedWaiting",
            "CardinalStoreRefusingBallots",
            "CardinalSealerLag",
            "CardinalNoSealer",
            "CardinalNoRelay",
        } <= alerts
    used = _metric_names(text)
    assert used
    assert used - _defined_metrics() == set()


def test_the_alert_rules_pass_their_promtool_tests() -> None:
    """infra/monitoring/alerts.test.yml: the sealer's alerts fire for a small election with
    no sealer leading, and not for a busy one sealed as it goes (observability review).
    Prometheus's promtool: named by PROMTOOL, on PATH, or the one `make tools` unpacks."""
    unpacked = ROOT / ".cardinal/tools/prometheus/usr/bin/promtool"
    promtool = (
        os.environ.get("PROMTOOL")
        or shutil.which("promtool")
        or (str(unpacked) if unpacked.exists() else None)
    )
    if promtool is None:  # (never a skip: CI must run it)
        pytest.fail("promtool not found: `make tools` unpacks it (Debian package prometheus)")
    done = subprocess.run(
        [promtool, "test", "rules", str(ROOT / "infra/monitoring/alerts.test.yml")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_runbook_says_what_every_alert_means_and_what_to_do() -> None:
    """docs/architecture.md's table names every rule, and each rule has a description."""
    rules = yaml.safe_load((ROOT / "infra/monitoring/alerts.yml").read_text())["groups"][0]
    docs = (ROOT / "docs/architecture.md").read_text()
    table = docs.split("### Alerts: what each means, what to do", 1)[1].split("\n#", 1)[0]
    for rule in rules["rules"]:
        assert f"| `{rule['alert']}` (" in table, rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]
    assert "#alerts-what-each-means-what-to-do" in (ROOT / "README.md").read_text()


def test_prometheus_scrapes_every_process() -> None:
    config = yaml.safe_load((ROOT / "infra/monitoring/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"api", "relay", "projector", "ingest", "rabbitmq"} <= jobs
