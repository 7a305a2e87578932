"""Several clusters in one settings file (``[[clusters]]``): the merge over the top level, the
per-cluster journal and secrets, `hacontrol check-config` naming the cluster in every message,
and every refusal of what two clusters may not share."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.settings import Loaded, SettingsError, load_settings, settings_from
from hacontrol.settings_clusters import ENTRY_SECTIONS, haproxy_socket_key
from hacontrol.settings_model import address_key
from tests.settings_documents import (
    BASE,
    BILLING,
    ORDERS,
    TOP,
    TWO,
    refused,
    run_check,
    write,
)


def test_each_cluster_is_the_top_level_with_its_entry_merged_over_it(tmp_path):
    loaded = load_settings(write(tmp_path, TWO))
    assert loaded.form == "clusters" and loaded.names == ("orders", "billing")
    orders, billing = loaded.clusters
    assert loaded.settings is orders
    assert [n.name for n in billing.nodes] == ["b1", "b2", "b3"] and billing.nodes[1].port == 3307
    assert orders.router.proxysql.writer_hostgroup == 10  # the default: the top level sets none
    assert billing.router.proxysql.writer_hostgroup == 110
    # key by key: the entry's max_lag, the top level's recovery_block and admin password
    assert (billing.failover.max_lag, billing.failover.recovery_block) == (2.5, 600.0)
    assert (orders.failover.max_lag, orders.failover.recovery_block) == (8.0, 600.0)
    assert billing.router.proxysql.password.get_secret_value() == "s3cret-admin"
    assert orders.api == billing.api and orders.log == billing.log
    assert orders.controller.instance_id == billing.controller.instance_id


def test_each_cluster_has_its_own_journal_next_to_the_one_configured(tmp_path):
    orders, billing = load_settings(write(tmp_path, TWO)).clusters
    assert orders.controller.journal == tmp_path.resolve() / "state/journal.orders.jsonl"
    assert billing.controller.journal == tmp_path.resolve() / "state/journal.billing.jsonl"


def test_a_single_form_journal_left_behind_is_refused_until_an_operator_moves_it(tmp_path, capsys):
    """Moving a file to [[clusters]] renames every journal: the old one may hold a cut plan or
    a recovery block that no cluster would read, so nothing starts until it is moved."""
    (tmp_path / "state").mkdir()
    old = tmp_path / "state/journal.jsonl"
    old.write_text("")  # empty: nothing to forget
    assert load_settings(write(tmp_path, TWO)).names == ("orders", "billing")
    old.write_text('{"record": "plan_started"}\n')
    code, out, err = run_check(write(tmp_path, TWO), capsys)
    assert code == 2 and out == ""
    assert f"controller.journal: {old.resolve()} holds a journal of the single-cluster form" in err
    assert "move the file to the journal of the cluster it belonged to" in err
    old.rename(tmp_path / "state/journal.orders.jsonl")
    assert load_settings(write(tmp_path, TWO)).names == ("orders", "billing")


def test_secrets_are_resolved_per_cluster_from_the_files_folder(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/billing.pw").write_text("s3cret-billing\n")
    text = TOP + ORDERS + BILLING + '[clusters.mysql]\npassword_file = "secrets/billing.pw"\n'
    orders, billing = load_settings(write(tmp_path, text)).clusters
    assert orders.mysql.password.get_secret_value() == "s3cret-controller"
    # the entry's file wins over the inherited inline password, and is read from the folder
    assert billing.mysql.password.get_secret_value() == "s3cret-billing"
    assert billing.mysql.replication_password.get_secret_value() == "s3cret-repl"


def test_the_environment_overrides_the_top_level_and_an_entry_overrides_both(tmp_path, monkeypatch):
    (tmp_path / "billing.pw").write_text("s3cret-billing")
    text = TOP.replace('password = "s3cret-controller"\n', "") + ORDERS + BILLING
    text += '[clusters.mysql]\npassword_file = "billing.pw"\n'
    monkeypatch.setenv("HACONTROL_FAILOVER__MAX_LAG", "7")
    monkeypatch.setenv("HACONTROL_MYSQL__PASSWORD", "s3cret-from-env")
    orders, billing = load_settings(write(tmp_path, text)).clusters
    assert (orders.failover.max_lag, billing.failover.max_lag) == (7.0, 2.5)
    assert orders.mysql.password.get_secret_value() == "s3cret-from-env"
    assert billing.mysql.password.get_secret_value() == "s3cret-billing"


def test_check_config_prints_every_cluster_with_secrets_masked(tmp_path, capsys):
    code, out, err = run_check(write(tmp_path, TWO), capsys)
    assert code == 0, err
    clusters = json.loads(out)["clusters"]
    assert list(clusters) == ["orders", "billing"]
    assert clusters["billing"]["router"]["proxysql"]["reader_hostgroup"] == 120
    assert clusters["orders"]["cluster"] == {"name": "orders"}
    for data in clusters.values():
        assert data["mysql"]["password"] == data["router"]["proxysql"]["password"] == "********"
        assert data["api"]["token"] == "********"
    assert "s3cret" not in out + err


def test_a_process_wide_warning_is_given_once_a_cluster_warning_names_its_cluster(tmp_path, capsys):
    text = TOP.replace('token = "s3cret-token-0123456789"', "") + ORDERS + BILLING
    text += '[[clusters.nodes]]\nname = "b4"\nhost = "10.0.1.4"\n'
    code, _, err = run_check(write(tmp_path, text), capsys)
    assert code == 0, err
    assert err.count("settings warning: api.token: no token configured") == 1
    assert "settings warning: clusters[1] (billing).nodes: 4 nodes is an even count" in err
    assert "(orders).nodes" not in err


def test_pick_names_the_clusters_there_are(tmp_path):
    loaded = load_settings(write(tmp_path, TWO))
    assert loaded.pick("billing") is loaded.clusters[1]
    with pytest.raises(SettingsError) as several:
        loaded.pick(None)
    assert several.value.problems == [
        "several clusters: give --cluster NAME (one of: orders, billing)"
    ]
    with pytest.raises(SettingsError) as unknown:
        loaded.pick("Orders")
    assert "unknown cluster 'Orders'" in str(unknown.value) and "orders, billing" in str(
        unknown.value
    )


def test_one_entry_is_picked_without_a_name_and_the_single_form_is_one_cluster(tmp_path):
    one = load_settings(write(tmp_path, TOP + BILLING))
    assert one.form == "clusters" and one.pick(None) is one.settings is one.clusters[0]
    single = load_settings(write(tmp_path, BASE))
    assert single.form == "single" and single.clusters == (single.settings,)
    assert single.pick(None) is single.pick("t") is single.settings
    assert Loaded(settings=single.settings, path=Path("x"), warnings=()).names == ("t",)


def test_clusters_may_reuse_hostgroups_on_different_admins_and_node_names(tmp_path):
    billing = BILLING.replace("writer_hostgroup = 110\n", 'host = "10.9.9.9"\n')
    billing = billing.replace("reader_hostgroup = 120", "reader_hostgroup = 20")
    billing = billing.replace('name = "b1"', 'name = "o1"')
    orders, other = load_settings(write(tmp_path, TOP + ORDERS + billing)).clusters
    assert (orders.router.proxysql.reader_hostgroup, other.router.proxysql.reader_hostgroup) == (
        20,
        20,
    )
    assert orders.nodes[0].name == other.nodes[0].name == "o1"


HAPROXY = TOP.replace('kind = "proxysql"', 'kind = "haproxy"\n[router.haproxy]\nsocket = "h.sock"')


def test_clusters_behind_one_haproxy_socket_with_backends_of_their_own(tmp_path):
    billing = BILLING + '[clusters.router.haproxy]\nwriter_backend = "bw"\nreader_backend = "br"\n'
    orders, other = load_settings(write(tmp_path, HAPROXY + ORDERS + billing)).clusters
    assert (orders.router.haproxy.writer_backend, other.router.haproxy.writer_backend) == (
        "writer",
        "bw",
    )


# Each case: (what is wrong, the document, the key the message must name, a word of the reason)
REFUSALS = [
    ("both forms: [cluster]", '[cluster]\nname = "x"\n' + TWO, "clusters", "use one form"),
    (
        "both forms: [[nodes]]",
        '[[nodes]]\nhost = "10.2.0.1"\n' + TWO,
        "clusters",
        "not both (found nodes)",
    ),
    ("not an array of tables", 'clusters = ["orders"]\n' + TOP, "clusters", "array of tables"),
    ("no entry", "clusters = []\n" + TOP, "clusters", "no entry"),
    (
        "api in an entry",
        TWO + "[clusters.api]\nport = 9\n",
        "clusters[1] (billing).api",
        "top level",
    ),
    (
        "log in an entry",
        TWO + '[clusters.log]\nlevel = "debug"\n',
        "clusters[1] (billing).log",
        "process-wide",
    ),
    (
        "controller in an entry",
        TOP + ORDERS + '[clusters.controller]\njournal = "j"\n' + BILLING,
        "clusters[0] (orders).controller",
        "process-wide",
    ),
    (
        "cluster in an entry",
        TWO + '[clusters.cluster]\nname = "z"\n',
        "clusters[1] (billing).cluster",
        "name key",
    ),
    (
        "unknown key in an entry",
        TWO + "[clusters.probe]\ninterval = 1\n",
        "clusters[1] (billing).probe",
        "unknown key",
    ),
    ("name missing", TOP + ORDERS.replace('name = "orders"\n', ""), "clusters[0].name", "missing"),
    (
        "nodes missing",
        TOP + '[[clusters]]\nname = "lonely"\n',
        "clusters[0] (lonely).nodes",
        "missing",
    ),
    (
        "invalid name",
        TOP + ORDERS.replace('"orders"', '"or ders"'),
        "clusters[0].name",
        "letters, digits",
    ),
    (
        "duplicate names",
        TOP + ORDERS + BILLING.replace('"billing"', '"orders"'),
        "clusters[1] (orders).name",
        "duplicate cluster name",
    ),
    (
        "names differing by case",
        TOP + ORDERS + BILLING.replace('"billing"', '"Orders"'),
        "clusters[1] (Orders).name",
        "by more than case",
    ),
    (
        "a per-cluster value",
        TWO.replace("max_lag = 2.5", "max_lag = -1"),
        "clusters[1] (billing).failover.max_lag",
        "greater than",
    ),
    (
        "a per-cluster rule",
        TWO.replace("[clusters.failover]", "[clusters.probes]\ntimeout = 2.0\n[clusters.failover]"),
        "clusters[1] (billing).probes.timeout",
        "smaller than",
    ),
    (
        "fewer than 3 nodes in one",
        TOP + BILLING + ORDERS.split('[[clusters.nodes]]\nname = "o3"')[0],
        "clusters[1] (orders).nodes",
        "at least 3",
    ),
    (
        "a per-cluster secret file",
        TWO + '[clusters.smtp]\nhost = "mx"\nuser = "u"\n'
        'recipients = ["a@b"]\npassword_file = "nope.pw"\n',
        "clusters[1] (billing).smtp.password_file",
        "cannot read secret file",
    ),
    (
        "a top-level value, once",
        TOP.replace("max_lag = 8.0", "max_lag = true") + ORDERS + BILLING,
        "failover.max_lag",
        "boolean",
    ),
    ("a top-level unknown key", "[probe]\ninterval = 1\n" + TWO, "probe", "unknown key"),
    (
        "a journal with no file name",
        TWO.replace('"state/journal.jsonl"', '"/"'),
        "controller.journal",
        "names no file",
    ),
    (
        "a journal name too long with the cluster's",
        TWO.replace("journal.jsonl", "j" * 250),
        "clusters[0] (orders).controller.journal",
        "too long",
    ),
    (
        "a journal that is ..",
        TWO.replace('"state/journal.jsonl"', '"state/.."'),
        "controller.journal",
        "names no file",
    ),
]
CROSS = [
    (
        "same node address",
        BILLING.replace('"10.0.1.1"', '"10.0.0.2"'),
        "clusters[1] (billing).nodes[0]",
        "10.0.0.2:3306 is also clusters[0] (orders).nodes[1]",
    ),
    (
        "same node, IPv4-mapped IPv6",
        BILLING.replace('"10.0.1.1"', '"::ffff:10.0.0.3"'),
        "clusters[1] (billing).nodes[0]",
        "10.0.0.3:3306 is also",
    ),
    (
        "same node, name spelt otherwise",
        BILLING,
        "clusters[1] (billing).nodes[2]",
        "db-b3.example.com:3306 is also clusters[0] (orders).nodes[2]",
    ),
    (
        "shared hostgroup on one admin",
        BILLING.replace("130", "30"),
        "clusters[1] (billing).router.proxysql.broken_hostgroup",
        "hostgroup 30 is also clusters[0] (orders).router.proxysql.broken_hostgroup on the "
        "ProxySQL admin 127.0.0.1:6032",
    ),
    (
        "hostgroups crossed on one admin",
        BILLING.replace("140", "10"),
        "clusters[1] (billing).router.proxysql.hidden_hostgroup",
        "also clusters[0] (orders).router.proxysql.writer_hostgroup",
    ),
    (
        "another admin user on one admin",
        BILLING.replace("writer_hostgroup", 'user = "other"\nwriter_hostgroup'),
        "clusters[1] (billing).router.proxysql.user",
        "share its admin connection",
    ),
]
CROSS = [
    (what, TOP + ORDERS.replace('"10.0.0.3"', '"DB-B3.example.com."') + billing, key, reason)
    if "spelt" in what
    else (what, TOP + ORDERS + billing, key, reason)
    for what, billing, key, reason in CROSS
]
CROSS.append(
    (
        "shared HAProxy backend on one socket",
        HAPROXY + ORDERS + BILLING + '[clusters.router.haproxy]\nsocket = "./h.sock"\n'
        'writer_backend = "bw"\nreader_backend = "writer"\n',
        "clusters[1] (billing).router.haproxy.reader_backend",
        "backend 'writer' is also clusters[0] (orders).router.haproxy.writer_backend",
    )
)
REFUSALS += CROSS


@pytest.mark.parametrize(("what", "text", "key", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_check_config_refuses_naming_the_cluster(tmp_path, capsys, what, text, key, reason):
    lines, err = refused(write(tmp_path, text), capsys)
    assert any(f"settings error: {key}: " in line and reason in line for line in lines), err


def test_another_admin_password_on_one_admin_is_refused_without_showing_it(tmp_path, capsys):
    billing = BILLING.replace("writer_hostgroup", 'password = "s3cret-other"\nwriter_hostgroup')
    code, _, err = run_check(write(tmp_path, TOP + ORDERS + billing), capsys)
    assert code == 2
    assert "settings error: clusters[1] (billing).router.proxysql.password: differs from " in err
    assert "s3cret" not in err


def test_a_top_level_problem_is_said_once_not_per_cluster(tmp_path):
    text = TOP.replace("max_lag = 8.0", "max_lag = true") + ORDERS + BILLING
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    assert [p.split(":")[0] for p in info.value.problems] == ["failover.max_lag"]


def test_nodes_from_the_environment_with_clusters_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HACONTROL_NODES", '[{"host": "10.3.0.1"}]')
    code, _, err = run_check(write(tmp_path, TWO), capsys)
    assert code == 2 and "clusters: use one form" in err and "nodes from the environment" in err


def test_every_cluster_problem_is_reported_at_once(tmp_path):
    text = TOP + ORDERS.replace('"10.0.0.3"', '"10.0.0.2"') + BILLING.replace("2.5", "0")
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    assert [p.split(":")[0] for p in info.value.problems] == [
        "clusters[0] (orders).nodes[2]",
        "clusters[1] (billing).failover.max_lag",
    ]


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (("10.0.0.1", 3306), ("10.0.0.1", 3307), False),
        (("::1", 1), ("0:0:0:0:0:0:0:1", 1), True),
        (("[::1]", 1), ("::1", 1), True),
        (("Db.Example.com.", 1), ("db.example.com", 1), True),
        (("::ffff:127.0.0.1", 1), ("127.0.0.1", 1), True),
    ],
)
def test_address_key_compares_literals_not_spellings(one, other, same):
    assert (address_key(*one) == address_key(*other)) is same


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("sandbox/h.sock", "./sandbox//h.sock", True),
        ("unix@/run/h.sock", "/run/h.sock", True),
        ("127.0.0.1:9999", "ipv4@127.0.0.1:9999", True),
        ("[::1]:9999", "ipv6@0:0::1:9999", True),
        ("127.0.0.1:9999", "127.0.0.1:9998", False),
    ],
)
def test_haproxy_socket_key(one, other, same):
    assert (haproxy_socket_key(one) == haproxy_socket_key(other)) is same


# The property: a valid single-form document and the same written as one [[clusters]] entry
# (each per-cluster key on either side of the merge) give the same settings, journal aside.
SINGLE = tomllib.loads(BASE.replace('replication_password_file = "repl.pw"', 'replication_'
                                    'password = "s3cret-repl"'))  # fmt: skip
VALID_EDITS = {
    ("failover", "max_lag"): st.floats(0.01, 3600),
    ("failover", "recovery_block"): st.floats(0, 86400),
    ("probes", "failure_threshold"): st.integers(1, 100),
    ("router", "proxysql", "writer_hostgroup"): st.integers(1000, 2000),
    ("router", "primary_is_reader"): st.booleans(),
    ("lease", "backoff"): st.floats(0.01, 10),
    ("hooks", "on_halt"): st.sampled_from(["", "/bin/true", "logger 'halted'"]),
    ("smtp", "sender"): st.sampled_from(["a@b", "hacontrol@example.com"]),
    ("mysql", "user"): st.sampled_from(["hacontrol", "ha"]),
    ("rebuild", "datadir"): st.sampled_from(["/var/lib/mysql", "/srv/db"]),
    ("api", "port"): st.integers(0, 65535),
}


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        data = data.setdefault(name, {})
    data[path[-1]] = value


@st.composite
def single_documents(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(SINGLE)
    for path in draw(st.lists(st.sampled_from(sorted(VALID_EDITS)), unique=True)):
        _set(data, path, draw(VALID_EDITS[path]))
    return data


def _split(draw: st.DrawFn, section: Any) -> tuple[Any, Any]:
    """(what stays at the top level, what goes into the entry), key by key."""
    if not isinstance(section, dict):
        return (section, None) if draw(st.booleans()) else (None, section)
    top: dict[str, Any] = {}
    entry: dict[str, Any] = {}
    for key, value in section.items():
        up, down = _split(draw, value)
        if up is not None:
            top[key] = up
        if down is not None:
            entry[key] = down
    return top, entry


@given(data=single_documents(), split=st.data())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_one_cluster_entry_gives_the_same_settings_as_the_single_form(tmp_path, data, split):
    single = settings_from(data, tmp_path / "settings.toml").settings
    top = {k: v for k, v in data.items() if k not in ("cluster", "nodes")}
    entry: dict[str, Any] = {"name": data["cluster"]["name"], "nodes": data["nodes"]}
    for section in ENTRY_SECTIONS:
        if section in top:
            top[section], below = _split(split.draw, top.pop(section))
            entry[section] = below
    document = {**top, "clusters": [entry]}
    loaded = settings_from(document, tmp_path / "settings.toml")
    journal = tmp_path.resolve() / "state/journal.t.jsonl"
    assert loaded.clusters[0].controller.journal == journal
    assert loaded.clusters == (
        single.model_copy(
            update={"controller": single.controller.model_copy(update={"journal": journal})}
        ),
    )


def test_the_commented_example_of_the_repository_settings_is_valid(tmp_path):
    """settings.toml ends with a [[clusters]] example: uncommented in place of [cluster] and
    [[nodes]], it loads (with the secret files it names)."""
    text = (Path(__file__).resolve().parent.parent / "settings.toml").read_text()
    live, _, example = text.partition("# [[clusters]]\n")
    live = re.sub(r"\n\[cluster\]\n.*?\n(?=\[mysql\])", "\n", live, flags=re.S)
    example = re.sub(r"^# ?", "", "# [[clusters]]\n" + example, flags=re.M)
    for name in ("hacontrol.password", "repl.password", "billing.password"):
        secret = tmp_path / ("secrets" if name == "billing.password" else "sandbox/secrets") / name
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("s3cret-" + name)
    path = tmp_path / "settings.toml"
    path.write_text(live + example)
    loaded = load_settings(path)
    orders, billing = loaded.clusters
    assert (orders.router.haproxy.writer_backend, billing.router.haproxy.writer_backend) == (
        "writer",
        "billing_writer",
    )
    assert billing.mysql.password.get_secret_value() == "s3cret-billing.password"
    assert billing.controller.journal.name == "journal.billing.jsonl"


def test_one_node_spelt_twice_in_one_cluster_is_refused(tmp_path, capsys):
    """Within a cluster too, addresses compare as literals: the same server counted twice
    would make a majority of two copies of one node."""
    text = BASE.replace('host = "10.0.0.2"', 'host = "::ffff:10.0.0.1"')
    code, _, err = run_check(write(tmp_path, text), capsys)
    assert code == 2 and "settings error: nodes[1]: duplicate node address" in err
