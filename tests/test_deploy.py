"""deploy/: the manifests load, use only real metric names, and carry settings hacontrol accepts.

Nothing here runs Kubernetes, Docker or systemd (none is available to the tests); what can be
checked without them is checked against the code: the settings load through
``hacontrol.settings`` with the secrets supplied through the environment, the container commands
parse with the real CLI parser, the metric names and label values exist in the output of a
real ``Metrics`` object, the grants are the sandbox's tested ones, and the stop timeouts exceed
the controller's plan budget.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.cli import build_parser
from hacontrol.controller import plan_budget
from hacontrol.events import PlanFinished, ProbeResult
from hacontrol.metrics import Metrics
from hacontrol.plan import ActionResult
from hacontrol.sandbox.render import (
    APP_PRIVILEGES,
    CONTROLLER_PRIVILEGES,
    MONITOR_PRIVILEGES,
    REPLICATION_PRIVILEGES,
)
from hacontrol.service import SHUTDOWN_GRACE
from hacontrol.settings import SECRETS, Settings, load_settings
from tests.factories import down, primary, replica, router
from tests.factories import settings as factory_settings
from tests.support import fold_all

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
SECRET_VALUES = {
    "mysql.password": "env-mysql",
    "mysql.replication_password": "env-repl",
    "router.proxysql.password": "env-proxysql",
    "smtp.password": "env-smtp",
    "api.token": "env-token-long-enough",
}


def _env_name(key: str) -> str:
    return "HACONTROL_" + key.upper().replace(".", "__")


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every secret through its HACONTROL_* variable, as a container could supply them."""
    for key, value in SECRET_VALUES.items():
        monkeypatch.setenv(_env_name(key), value)


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in _documents(DEPLOY / "kubernetes" / "pod.yaml"):
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise AssertionError(f"no {kind} {name or ''} in pod.yaml")


def _container(name: str) -> dict[str, Any]:
    spec = _k8s("StatefulSet")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _cli_args(command: list[str]) -> Any:
    assert Path(command[0]).name == "hacontrol", command
    return build_parser().parse_args(command[1:])


def _cnf_values(text: str, key: str) -> list[str]:
    """Values of ``key = value`` / ``key="value"`` lines of a my.cnf or proxysql.cnf."""
    pattern = rf'^\s*{re.escape(key)}\s*=\s*"?([^"\n]*?)"?\s*(?:#.*)?$'
    return re.findall(pattern, text, re.MULTILINE)


# ---- every file loads ---------------------------------------------------------------------


def test_there_are_yaml_files_and_every_one_loads():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"kubernetes/pod.yaml", "docker-compose.yml", "prometheus/alerts.yml"} <= names
    for path in YAML_FILES:
        assert _documents(path), f"{path} is empty"


def test_grafana_dashboard_is_json_with_unique_panels():
    dashboard = json.loads((DEPLOY / "grafana" / "hacontrol.json").read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(t["expr"] for t in panel["targets"])


# ---- metric names and labels ----------------------------------------------------------------


def _rendered_samples() -> dict[str, dict[str, set[str]]]:
    """sample name -> label name -> values seen, from a Metrics object fed with real values."""
    s = factory_settings()
    metrics = Metrics("t")
    events = [primary("node1"), replica("node2", seconds_behind=1), down("node3"), router()]
    for event in events:
        if isinstance(event, ProbeResult):
            metrics.observe_probe(event)
    metrics.observe_view(fold_all(s, events))
    steps = (ActionResult("RouteFence", "node1", True, True, "done", index=0, seconds=0.1),)
    metrics.observe_plan(
        PlanFinished(10.0, "failover-1", "DeadPrimary", "failover", True, "done", None, steps, 0.1),
        0.5,
    )
    metrics.observe_loop(0.001, 0)
    metrics.set_halt(False)
    metrics.observe_journal(True, 2**30)
    metrics.observe_lease("c1", True, 1, {"node1": True})
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return out


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard target."""
    out = []
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    for group in alerts["groups"]:
        for rule in group["rules"]:
            out.append((f"alerts.yml {rule['alert']}", rule["expr"]))
    dashboard = json.loads((DEPLOY / "grafana" / "hacontrol.json").read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            out.append((f"hacontrol.json {panel['title']}", target["expr"]))
    return out


SELECTOR = re.compile(r"\b(hacontrol_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def metric_problems(
    expressions: list[tuple[str, str]], exported: dict[str, dict[str, set[str]]]
) -> tuple[list[str], set[str]]:
    """(problems, metric names used): unknown metrics, labels and label values."""
    problems = []
    used = set()
    for where, expr in expressions:
        for name, matchers in SELECTOR.findall(expr):
            used.add(name)
            if name not in exported:
                problems.append(f"{where}: unknown metric {name}")
                continue
            for label, op, value in MATCHER.findall(matchers or ""):
                if label == "cluster":
                    continue
                if label not in exported[name]:
                    problems.append(f"{where}: {name} has no label {label}")
                elif op in ("=", "=~"):
                    unknown = set(value.split("|")) - exported[name][label]
                    if unknown:
                        problems.append(f"{where}: {name}{{{label}}} never takes {unknown}")
    return problems, used


def test_an_unknown_metric_label_or_value_is_reported():
    exported = _rendered_samples()
    problems, _ = metric_problems(
        [
            ("a", "hacontrol_nodes_up == 0"),
            ("b", 'hacontrol_problems{code="DeadPrimary"} > 0'),
            ("c", 'hacontrol_problems{code=~"DeadPrimary|NoSuchCode"} > 0'),
            ("d", 'hacontrol_failovers_total{result="ok"}'),
        ],
        exported,
    )
    assert problems == [
        "a: unknown metric hacontrol_nodes_up",
        "c: hacontrol_problems{code} never takes {'NoSuchCode'}",
        "d: hacontrol_failovers_total has no label result",
    ]


def test_every_metric_and_label_used_in_alerts_and_dashboard_exists():
    problems, used = metric_problems(_expressions(), _rendered_samples())
    assert not problems, "\n".join(problems)
    # The panels and rules the deployment issue asks for are there.
    for name in (
        "hacontrol_node_up",
        "hacontrol_node_is_primary",
        "hacontrol_replica_lag_seconds",
        "hacontrol_probe_rtt_seconds_bucket",
        "hacontrol_failovers_total",
        "hacontrol_last_failover_phase_seconds",
        "hacontrol_halt_active",
        "hacontrol_queue_depth",
        "hacontrol_decision_loop_lag_seconds_bucket",
        "hacontrol_problems",
        "hacontrol_quorum",
        "hacontrol_mails_total",
    ):
        assert name in used, f"{name} is used by no rule or panel"


def test_an_alert_fires_when_the_controller_itself_is_down():
    exprs = [expr for where, expr in _expressions() if where.startswith("alerts.yml")]
    assert 'up{job="hacontrol"} == 0' in exprs


# ---- Kubernetes --------------------------------------------------------------------------


def test_k8s_settings_validate_with_secrets_from_the_environment(tmp_path, secrets_in_env):
    text = _k8s("ConfigMap")["data"]["settings.toml"]
    path = tmp_path / "settings.toml"
    path.write_text(text)
    loaded = load_settings(path)
    s = loaded.settings
    assert loaded.warnings == ()
    assert s.router.kind == "proxysql"
    hostgroups = s.router.proxysql
    assert (
        hostgroups.writer_hostgroup,
        hostgroups.reader_hostgroup,
        hostgroups.broken_hostgroup,
        hostgroups.hidden_hostgroup,
    ) == (10, 20, 30, 40)
    assert (s.router.proxysql.host, s.router.proxysql.port) == ("127.0.0.1", 6032)
    assert s.api.host == "0.0.0.0"  # the kubelet probes the pod IP
    assert s.mysql.password is not None and s.mysql.password.get_secret_value() == "env-mysql"


def test_k8s_secret_files_journal_and_config_paths_match_the_mounts():
    config = _k8s("ConfigMap")["data"]["settings.toml"]
    s = Settings(**tomllib.loads(config))
    container = _container("hacontrol")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    statefulset = _k8s("StatefulSet")
    spec = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}

    args = _cli_args(container["command"])
    assert args.func.__name__ == "cmd_run"
    assert Path(args.config).parent == Path(mounts["settings"])
    assert Path(args.config).name in _k8s("ConfigMap")["data"]

    secret_keys = {i["key"] for i in volumes["secrets"]["secret"]["items"]}
    assert secret_keys <= set(_k8s("Secret")["stringData"])
    for section_path, _, file_field in SECRETS:
        section: Any = s
        for part in section_path:
            section = getattr(section, part)
        file = getattr(section, file_field)
        assert file is not None, f"{'.'.join(section_path)}.{file_field} is not set"
        assert file.parent == Path(mounts["secrets"]), file
        assert file.name in secret_keys, file

    assert s.controller.journal.is_absolute()
    assert s.controller.journal.parent == Path(mounts["journal"])
    assert "journal" not in volumes  # each pod's own volume, from the claim template
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "journal"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_k8s_runs_a_fleet_of_proxysql_pods_each_with_its_sidecar():
    statefulset = _k8s("StatefulSet")
    assert statefulset["spec"]["replicas"] >= 2  # every ProxySQL with its own hacontrol
    assert statefulset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert {c["name"] for c in statefulset["spec"]["template"]["spec"]["containers"]} == {
        "proxysql",
        "hacontrol",
    }
    assert _k8s("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert _k8s("Service", "hacontrol")["spec"]["clusterIP"] == "None"  # each pod's API
    config = _k8s("ConfigMap")["data"]["settings.toml"]
    s = Settings(**tomllib.loads(config))
    assert s.controller.fleet and "instance_id" not in tomllib.loads(config)["controller"]
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > plan_budget(s) + SHUTDOWN_GRACE  # a leader lets its plan finish


def test_k8s_probes_use_the_api_port_and_endpoints():
    container = _container("hacontrol")
    config = _k8s("ConfigMap")["data"]["settings.toml"]
    s = Settings(**tomllib.loads(config))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["api"] == s.api.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "api"}
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert "cpu" not in container["resources"]["limits"]


def test_k8s_proxysql_config_matches_the_settings():
    secret = _k8s("Secret")["stringData"]
    cnf = secret["proxysql.cnf"]
    s = Settings(**tomllib.loads(_k8s("ConfigMap")["data"]["settings.toml"]))
    assert not re.search(r"^\s*mysql_replication_hostgroups\s*=", cnf, re.MULTILINE)
    assert not re.search(r"^\s*proxysql_servers\s*=", cnf, re.MULTILINE)  # no Cluster sync
    assert _cnf_values(cnf, "admin_credentials") == [f"admin:{secret['proxysql-admin-password']}"]
    assert _cnf_values(cnf, "mysql_ifaces") == ["127.0.0.1:6032"]
    addresses = re.findall(r'address="([^"]+)", port=(\d+), hostgroup=(\d+)', cnf)
    assert {(a, int(p)) for a, p, _ in addresses} == {(n.host, n.port) for n in s.nodes}
    assert {int(hg) for _, _, hg in addresses} == {30}  # nothing routed before hacontrol acts


# ---- docker compose ----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def _secret(name: str) -> str:
    path = DEPLOY / _compose()["secrets"][name]["file"]
    return path.read_text(encoding="utf-8").rstrip("\n")


def test_compose_settings_validate_and_name_the_compose_services(tmp_path, secrets_in_env):
    path = tmp_path / "settings.toml"
    path.write_text((COMPOSE / "hacontrol" / "settings.toml").read_text(encoding="utf-8"))
    s = load_settings(path).settings
    compose = _compose()
    assert [n.host for n in s.nodes] == ["db1", "db2", "db3"]
    assert all(n.host in compose["services"] for n in s.nodes)
    service = compose["services"]["hacontrol"]
    assert service["network_mode"] == "service:proxysql"
    assert _cli_args(service["command"]).config == "/etc/hacontrol/settings.toml"
    for section_path, _, file_field in SECRETS:
        section: Any = s
        for part in section_path:
            section = getattr(section, part)
        file = getattr(section, file_field)
        if file is not None:
            assert file.parent == Path("/run/secrets") and file.name in service["secrets"], file
    seconds = int(service["stop_grace_period"].rstrip("s"))
    assert seconds > plan_budget(s) + SHUTDOWN_GRACE
    # A fleet of two pairs: each sidecar in its own ProxySQL's namespace, its own journal and
    # instance id, the same settings.
    second = compose["services"]["hacontrol2"]
    assert s.controller.fleet
    assert second["network_mode"] == "service:proxysql2" and "proxysql2" in compose["services"]
    assert second["command"] == service["command"]
    ids = {x["environment"]["HACONTROL_CONTROLLER__INSTANCE_ID"] for x in (service, second)}
    assert ids == {"pair1", "pair2"}
    journals = {v.split(":")[0] for x in (service, second) for v in x["volumes"] if "journal" in v}
    assert journals == {"hacontrol-journal", "hacontrol2-journal"}


def test_compose_secret_files_exist_and_proxysql_uses_the_same_passwords():
    for name in _compose()["secrets"]:
        assert _secret(name), name
    cnf = (COMPOSE / "proxysql" / "proxysql.cnf").read_text(encoding="utf-8")
    assert _cnf_values(cnf, "admin_credentials") == [f"admin:{_secret('proxysql_admin_password')}"]
    assert _cnf_values(cnf, "monitor_password") == [_secret("monitor_password")]
    assert f'username="app", password="{_secret("app_password")}"' in cnf
    assert not re.search(r"^\s*mysql_replication_hostgroups\s*=", cnf, re.MULTILINE)
    rows = re.findall(r'address="([^"]+)", port=3306, hostgroup=(\d+)', cnf)
    assert sorted(rows) == [("db1", "10"), ("db1", "20"), ("db2", "20"), ("db3", "20")]


def test_compose_grants_are_the_sandbox_tested_least_privilege_grants():
    script = (COMPOSE / "initdb" / "primary" / "10-users.sh").read_text(encoding="utf-8")
    grants = {" ".join(g.split()) for g in re.findall(r"^GRANT [^;]+", script, re.MULTILINE)}
    assert grants == {
        f"GRANT {CONTROLLER_PRIVILEGES} ON *.* TO 'hacontrol'@'%'",
        f"GRANT {REPLICATION_PRIVILEGES} ON *.* TO 'repl'@'%'",
        f"GRANT {APP_PRIVILEGES} ON app.* TO 'app'@'%'",
        f"GRANT {MONITOR_PRIVILEGES} ON *.* TO 'monitor'@'%'",
    }


def test_compose_replicas_use_gtid_and_a_heartbeat_below_io_stall():
    script = (COMPOSE / "initdb" / "replica" / "10-replicate.sh").read_text(encoding="utf-8")
    change = re.search(r"^CHANGE MASTER TO .*;$", script, re.MULTILINE)
    assert change is not None
    assert "MASTER_USE_GTID=slave_pos" in change.group(0)
    assert "MASTER_HOST='db1', MASTER_PORT=3306" in change.group(0)
    heartbeat = float(re.search(r"MASTER_HEARTBEAT_PERIOD=([\d.]+)", change.group(0)).group(1))
    assert heartbeat <= Settings().failover.io_stall / 2


def test_compose_node_configs():
    common = (COMPOSE / "mariadb" / "common.cnf").read_text(encoding="utf-8")
    for key, value in (
        ("gtid_strict_mode", "ON"),
        ("log_slave_updates", "ON"),
        ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
        ("rpl_semi_sync_slave_enabled", "ON"),
        ("binlog_format", "ROW"),
    ):
        assert _cnf_values(common, key) == [value], key
    assert _cnf_values(common, "log_bin")
    nodes = {n: (COMPOSE / "mariadb" / f"{n}.cnf").read_text() for n in ("db1", "db2", "db3")}
    assert len({_cnf_values(t, "server_id")[0] for t in nodes.values()}) == 3
    assert _cnf_values(nodes["db1"], "read_only") == ["OFF"]
    assert (
        _cnf_values(nodes["db2"], "read_only") == _cnf_values(nodes["db3"], "read_only") == ["ON"]
    )
    services = _compose()["services"]
    for name in nodes:
        assert services[name]["image"] == "mariadb:10.11"
        mounted = [v.split(":")[0] for v in services[name]["volumes"]]
        assert f"./compose/mariadb/{name}.cnf" in mounted
    assert services["proxysql"]["image"] == "proxysql/proxysql:2.7.1"


# ---- systemd -----------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "hacontrol.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_systemd_unit_is_hardened_and_waits_for_a_running_plan():
    service = _unit()["Service"]
    expected = {
        "User": "hacontrol",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "Restart": "always",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "StateDirectory": "hacontrol",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert "/var/lib/hacontrol" in service["ReadWritePaths"].split()
    assert int(service["TimeoutStopSec"]) > plan_budget(Settings()) + SHUTDOWN_GRACE
    run = _cli_args(service["ExecStart"].split())
    assert run.func.__name__ == "cmd_run" and run.config == "/etc/hacontrol/settings.toml"
    check = _cli_args(service["ExecStartPre"].split())
    assert check.func.__name__ == "cmd_check_config"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_accepts_the_unit(tmp_path: Path):
    # verify insists that ExecStart exists: point it at /bin/true, keep everything else.
    unit = tmp_path / "hacontrol.service"
    unit.write_text(UNIT.read_text().replace("/opt/hacontrol/bin/hacontrol", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
