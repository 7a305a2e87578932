"""Settings loading and `hacontrol check-config`: every error names its key and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hacontrol.cli import main
from hacontrol.settings import SettingsError, check, load_settings
from tests.settings_documents import BASE, refused, run_check, write

REPO = Path(__file__).resolve().parent.parent


def test_valid_file_prints_effective_settings_with_secrets_masked(tmp_path, capsys):
    code, out, err = run_check(write(tmp_path, BASE), capsys)
    assert code == 0, err
    data = json.loads(out)
    assert [n["name"] for n in data["nodes"]] == ["a", "b", "c"]
    assert data["nodes"][1]["port"] == 3306
    assert data["nodes"][2] == {
        "name": "c",
        "host": "10.0.0.3",
        "port": 3306,
        "priority": 5,
        "no_promote": True,
    }
    assert data["router"]["proxysql"]["writer_hostgroup"] == 10
    assert data["router"]["proxysql"]["hidden_hostgroup"] == 40
    assert data["probes"] == {"interval": 1.0, "timeout": 0.8, "failure_threshold": 3}
    assert data["mysql"]["password"] == "********"
    assert data["mysql"]["replication_password"] == "********"
    assert data["router"]["proxysql"]["password"] == "********"
    assert "s3cret" not in out + err


def test_secret_file_is_read_relative_to_the_settings_file(tmp_path):
    loaded = load_settings(write(tmp_path, BASE))
    assert loaded.settings.mysql.replication_password.get_secret_value() == "s3cret-repl"


def test_environment_overrides_file_and_supplies_secrets(tmp_path, monkeypatch):
    text = BASE.replace('password = "s3cret-controller"\n', "")
    monkeypatch.setenv("HACONTROL_MYSQL__PASSWORD", "from-env")
    monkeypatch.setenv("HACONTROL_PROBES__INTERVAL", "2.5")
    loaded = load_settings(write(tmp_path, text))
    assert loaded.settings.mysql.password.get_secret_value() == "from-env"
    assert loaded.settings.probes.interval == 2.5


def test_config_path_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HACONTROL_CONFIG", str(write(tmp_path, BASE)))
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config"])
    assert exit_info.value.code == 0
    assert json.loads(capsys.readouterr().out)["cluster"]["name"] == "t"


# Each case: (what is wrong, edit of BASE, the key the message must name, a word of the reason)
ERRORS = [
    ("unknown key", BASE + "\n[probes]\nintervall = 1\n", "probes.intervall", "unknown key"),
    (
        "port out of range",
        BASE.replace("port = 3306", "port = 70000"),
        "nodes[0].port",
        "65535",
    ),
    (
        "duplicate node addresses",
        BASE.replace('host = "10.0.0.2"', 'host = "10.0.0.1"\nport = 3306'),
        "nodes[1]",
        "duplicate node address",
    ),
    (
        "fewer than 3 nodes",
        BASE.replace('[[nodes]]\nname = "c"', '[[other]]\nname = "c"').split("[[other]]")[0]
        + "[mysql]\npassword = 'x'\nreplication_password = 'y'\n[router]\nkind = 'none'\n",
        "nodes",
        "at least 3",
    ),
    (
        "colliding hostgroups",
        BASE + "reader_hostgroup = 10\n",
        "router.proxysql.reader_hostgroup",
        "collides",
    ),
    (
        "probe timeout not smaller than interval",
        BASE + "\n[probes]\ninterval = 1.0\ntimeout = 1.0\n",
        "probes.timeout",
        "smaller than probes.interval",
    ),
    (
        "a drain that leaves a switchover no time",
        BASE + "\n[failover]\ndrain_timeout = 6.0\nswitchover_deadline = 10.0\n",
        "failover.drain_timeout",
        "exceeds failover.switchover_deadline",
    ),
    (
        "missing controller password",
        BASE.replace('password = "s3cret-controller"\n', ""),
        "mysql.password",
        "missing password",
    ),
    (
        "missing router password",
        BASE.replace('password = "s3cret-admin"\n', ""),
        "router.proxysql.password",
        "missing password",
    ),
    (
        "unreadable secret file",
        BASE.replace('"repl.pw"', '"no-such-file"'),
        "mysql.replication_password_file",
        "cannot read",
    ),
    (
        "wrong type",
        BASE.replace("priority = 5", 'priority = "high"'),
        "nodes[2].priority",
        "integer",
    ),
    ("bad tls mode", BASE + '\n[smtp]\ntls = "ssl"\n', "smtp.tls", "starttls"),
    (
        "smtp host without recipients",
        BASE + '\n[smtp]\nhost = "mail.example.com"\n',
        "smtp.recipients",
        "empty",
    ),
    # Values that are valid TOML but would fail or misbehave in `run` (issue 17).
    (
        "a path with a NUL byte",
        BASE.replace('"repl.pw"', '"repl\\u0000.pw"'),
        "mysql.replication_password_file",
        "NUL byte",
    ),
    (
        "a journal path with a NUL byte",
        BASE + '\n[controller]\njournal = "state/j\\u0000.jsonl"\n',
        "controller.journal",
        "NUL byte",
    ),
    (
        "an API host that is no host",
        BASE + '\n[api]\nhost = "not a host;rm -rf"\n',
        "api.host",
        "not a host",
    ),
    (
        "a node host that is no host",
        BASE.replace('"10.0.0.3"', '"db3 --x"'),
        "nodes[2].host",
        "not a host",
    ),
    (
        "a journal under /proc",
        BASE + '\n[controller]\njournal = "/proc/self/j"\n',
        "controller.journal",
        "pseudo-filesystem",
    ),
    (
        "a journal under a file",
        BASE + '\n[controller]\njournal = "/etc/hostname/j.jsonl"\n',
        "controller.journal",
        "which is a file",
    ),
    (
        "a journal that is a directory",
        BASE + '\n[controller]\njournal = "/tmp"\n',
        "controller.journal",
        "is a directory",
    ),
    (
        "an absurdly small interval",
        BASE + "\n[probes]\ninterval = 1e-299\n",
        "probes.interval",
        "0.05",
    ),
    (
        "an infinite recovery block",
        BASE + "\n[failover]\nrecovery_block = inf\n",
        "failover.recovery_block",
        "finite",
    ),
    (
        "a NaN timeout",
        BASE + "\n[failover]\naction_timeout = nan\n",
        "failover.action_timeout",
        "finite",
    ),
    (
        "a boolean for a number",
        BASE + "\n[probes]\ninterval = true\n",
        "probes.interval",
        "boolean",
    ),
    (
        "a boolean for a port",
        BASE.replace("port = 3306", "port = true"),
        "nodes[0].port",
        "boolean",
    ),
    (
        "too many nodes",
        BASE + "".join(f'\n[[nodes]]\nhost = "10.1.{i // 250}.{i % 250}"\n' for i in range(4998)),
        "nodes",
        "at most 64",
    ),
    (
        "a token with a space",
        BASE + '\n[api]\ntoken = "two words-0123456789"\n',
        "api.token",
        "visible ASCII",
    ),
    ("a token too short", BASE + '\n[api]\ntoken = "true"\n', "api.token", "too short"),
    (
        "a password too short",
        BASE.replace('"s3cret-admin"', '"admin"'),
        "router.proxysql.password",
        "too short",
    ),
    ("a pydantic option as a key", "_secrets_dir = '/etc'\n" + BASE, "_secrets_dir", "unknown key"),
    # The fleet's lease (docs/fleet.md).
    (
        "a fractional wait_timeout",
        BASE + "\n[lease]\nwait_timeout = 1.5\n",
        "lease.wait_timeout",
        "integer",
    ),
    (
        "a zero wait_timeout",
        BASE + "\n[lease]\nwait_timeout = 0\n",
        "lease.wait_timeout",
        "equal to 1",
    ),
    (
        "a keepalive longer than a third of wait_timeout",
        BASE + "\n[lease]\nwait_timeout = 3\nkeepalive = 1.5\nvalidity = 2.5\n",
        "lease.keepalive",
        "a third of lease.wait_timeout",
    ),
    (
        "a validity not smaller than wait_timeout",
        BASE + "\n[lease]\nwait_timeout = 2\nvalidity = 2.0\n",
        "lease.validity",
        "before the server can free it",
    ),
    (
        "a validity too short for a keepalive and a statement",
        BASE + "\n[lease]\nwait_timeout = 3\nkeepalive = 1.0\nvalidity = 1.2\nmargin = 0.5\n",
        "lease.validity",
        "between two keepalives",
    ),
    (
        "a cluster name too long for a lock name (MySQL refuses user locks over 64 characters)",
        BASE.replace('name = "t"', 'name = "' + "c" * 47 + '"', 1),
        "cluster.name",
        "64 characters",
    ),
    (
        "an instance id with a space",
        BASE + '\n[controller]\ninstance_id = "a b"\n',
        "controller.instance_id",
        "pattern",
    ),
    *(
        (f"rebuild: {what}", BASE + "\n[rebuild]\n" + text, key, reason)
        for what, text, key, reason in [
            (
                "an unknown placeholder",
                'stop_target = ["ssh", "{host}"]\nstart_target = ["x"]\n',
                "rebuild.stop_target",
                "unknown placeholder {host}",
            ),
            (
                "half a stop/start pair",
                'stop_target = ["x"]\n',
                "rebuild.start_target",
                "both stop_target and start_target",
            ),
            ("a relative datadir", 'datadir = "data"\n', "rebuild.datadir", "absolute path"),
            (
                "a datadir with a space",
                'datadir = "/var/lib/my sql"\n',
                "rebuild.datadir",
                "only letters, digits",
            ),
            (
                "a datadir for no node",
                '[rebuild.datadirs]\nnode9 = "/d/x"\n',
                "rebuild.datadirs.node9",
                "not a configured node",
            ),
            (
                "an owner that is no user",
                'datadir_owner = "mysql:mysql;rm"\n',
                "rebuild.datadir_owner",
                "user or user:group",
            ),
            ("an unknown key", "copy = 5\n", "rebuild.copy", "unknown key"),
            ("a zero timeout", "copy_timeout = 0\n", "rebuild.copy_timeout", "greater"),
        ]
    ),
]


@pytest.mark.parametrize(("what", "text", "key", "reason"), ERRORS, ids=[e[0] for e in ERRORS])
def test_check_config_error_names_key(tmp_path, capsys, what, text, key, reason):
    lines, err = refused(write(tmp_path, text), capsys)
    assert any(f"error: {key}:" in line or f"error: {key} " in line for line in lines), err
    assert reason in err


def test_secret_file_that_is_not_utf8(tmp_path, capsys):
    path = write(tmp_path, BASE)
    (tmp_path / "repl.pw").write_bytes(b"\xff\xfe s3cret")
    code, out, err = run_check(path, capsys)
    assert (code, out) == (2, "")
    assert "settings error: mysql.replication_password_file: " in err and "not UTF-8" in err


@pytest.mark.parametrize(
    ("target", "reason"), [("/dev/zero", "not a regular file"), ("big", "larger than")]
)
def test_secret_file_that_is_no_secret(tmp_path, capsys, target, reason):
    path = write(tmp_path, BASE)
    (tmp_path / "big").write_text("x" * 70_000)
    text = BASE.replace('"repl.pw"', json.dumps(target))
    code, _, err = run_check(write(tmp_path, text), capsys)
    assert code == 2 and "mysql.replication_password_file: " in err and reason in err
    assert path.exists()


def test_a_secret_given_with_a_wrong_type_is_not_echoed(tmp_path, capsys):
    code, _, err = run_check(
        write(tmp_path, BASE.replace('"s3cret-controller"', "987654321")), capsys
    )
    assert code == 2 and "settings error: mysql.password: " in err
    assert "987654321" not in err


def test_environment_value_that_is_not_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HACONTROL_NODES", "[{")
    code, _, err = run_check(write(tmp_path, BASE), capsys)
    assert code == 2
    assert "settings error: nodes: HACONTROL_NODES is not valid JSON" in err


def test_hosts_that_parse(tmp_path):
    text = (
        BASE.replace('"10.0.0.1"', '"db-1.prod.example.com."')
        .replace('"10.0.0.2"', '"fd00::2"')
        .replace('"10.0.0.3"', '"mariadb_3"')
    ) + '\n[api]\nhost = "0.0.0.0"\ntoken = "0123456789abcdef"\n'
    loaded = load_settings(write(tmp_path, text))
    assert [n.host for n in loaded.settings.nodes] == [
        "db-1.prod.example.com.",
        "fd00::2",
        "mariadb_3",
    ]


def test_missing_file_names_the_path(tmp_path, capsys):
    code, _, err = run_check(tmp_path / "nope.toml", capsys)
    assert code == 2
    assert "config: file not found" in err and "nope.toml" in err


def test_unreadable_file(tmp_path, capsys):
    # A directory cannot be read as a file, even by root.
    code, _, err = run_check(tmp_path, capsys)
    assert code == 2
    assert "config: cannot read" in err


def test_invalid_toml_names_line(tmp_path, capsys):
    code, _, err = run_check(write(tmp_path, BASE + "\n[probes\n"), capsys)
    assert code == 2
    assert "config: invalid TOML" in err and "line" in err


def test_even_node_count_is_a_warning_not_an_error(tmp_path, capsys):
    text = BASE + '\n[[nodes]]\nname = "d"\nhost = "10.0.0.4"\n'
    code, out, err = run_check(write(tmp_path, text), capsys)
    assert code == 0
    assert "settings warning: nodes: 4 nodes is an even count" in err
    assert len(json.loads(out)["nodes"]) == 4


def test_every_error_is_reported_at_once(tmp_path):
    text = BASE.replace('password = "s3cret-controller"\n', "") + (
        "reader_hostgroup = 10\n[probes]\ninterval = 1.0\ntimeout = 2.0\n"
    )
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == ["probes.timeout", "mysql.password", "router.proxysql.reader_hostgroup"]


def test_check_is_pure_and_default_node_name(tmp_path):
    loaded = load_settings(write(tmp_path, BASE.replace('name = "b"\n', "")))
    assert loaded.settings.nodes[1].name == "10.0.0.2:3306"
    errors, warnings = check(loaded.settings)
    assert errors == [] and [w.split(":")[0] for w in warnings] == ["api.token"]


def test_lease_defaults_are_consistent_and_the_instance_is_named_after_the_host(tmp_path):
    settings = load_settings(write(tmp_path, BASE)).settings
    lease = settings.lease
    assert isinstance(lease.wait_timeout, int) and lease.validity < lease.wait_timeout
    assert lease.keepalive + lease.margin < lease.validity
    assert settings.controller.instance_id == os.uname().nodename.split(".")[0]
    assert settings.controller.fleet is True  # one instance is a fleet of one


def test_a_fleet_whose_lease_is_shorter_than_a_probe_interval_is_warned(tmp_path, capsys):
    text = BASE + "\n[controller]\nfleet = true\n[lease]\nwait_timeout = 1\nkeepalive = 0.2\n"
    text += "validity = 0.8\nmargin = 0.2\n[probes]\ninterval = 2.0\n"
    code, _, err = run_check(write(tmp_path, text), capsys)
    assert code == 0
    assert "settings warning: lease.wait_timeout: 1 s is shorter than probes.interval" in err


def test_repository_settings_toml_is_valid_for_the_sandbox(tmp_path):
    """The example at the repository root parses; only its sandbox secret files are absent."""
    with pytest.raises(SettingsError) as info:
        load_settings(REPO / "settings.toml")
    assert all("password_file: cannot read secret file" in p for p in info.value.problems)


def test_console_script_exit_code(tmp_path):
    path = write(tmp_path, BASE.replace("port = 3306", "port = 0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hacontrol", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "nodes[0].port" in proc.stderr


def test_hook_command_that_cannot_be_split_names_the_key(tmp_path, capsys):
    text = BASE + '\n[hooks]\npre_failover = "/usr/local/bin/guard \'unbalanced"\n'
    code, _, err = run_check(write(tmp_path, text), capsys)
    assert code == 2 and "hooks.pre_failover: cannot split the command line" in err


def test_api_without_token_is_a_warning(tmp_path, capsys):
    code, _, err = run_check(write(tmp_path, BASE), capsys)
    assert code == 0 and "settings warning: api.token: no token configured" in err
