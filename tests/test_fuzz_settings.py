"""Fuzzing the settings: whatever the TOML document, its bytes or the HACONTROL_* environment
hold, loading gives valid settings or a SettingsError whose every problem is one line naming a
key; never another exception.

Budget: ``HACONTROL_FUZZ_EXAMPLES`` (default 200 per target); docs/hardening.md shows how to
run longer.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.settings import Loaded, Settings, SettingsError, load_settings, settings_from

EXAMPLES = int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

BASE_TOML = """
[cluster]
name = "fuzz"
[[nodes]]
name = "a"
host = "10.0.0.1"
[[nodes]]
name = "b"
host = "db-2.example.com"
port = 3307
[[nodes]]
host = "fd00::3"
priority = 5
no_promote = true
[mysql]
password = "controller-secret"
replication_password = "replication-secret"
[router]
kind = "proxysql"
[router.proxysql]
password = "proxysql-secret"
[probes]
interval = 1.0
timeout = 0.5
[failover]
recovery_block = 600.0
[api]
host = "127.0.0.1"
token = "api-token-0123456789"
[controller]
journal = "state/journal.jsonl"
"""
BASE = tomllib.loads(BASE_TOML)
SECTIONS = sorted(Settings.model_fields)

KEYS = ["interval", "timeout", "host", "port", "password", "token", "name", "journal", "kind"]
KEYS += ["_secrets_dir", "_cli_parse_args", "model_config", "__class__", "nodes", "api", "clusters"]
keys = st.sampled_from(KEYS) | st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
ODD = ["", " ", "\x00", "not a host;rm -rf", "/proc/self/x", "/etc/hostname/j", "/tmp", "inf"]
ODD += ["nan", "true", "1e-299", "-1", "0.0.0.0", "::", "é" * 5, "x" * 300, "/", ".."]
texts = st.text(max_size=30) | st.sampled_from(ODD)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.sampled_from([1e-299, 1e300, float("inf"), -0.0, 0.05, 3600.0, 86400.0])
    | texts
    | st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 1, 1))
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=8,
)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths(v, (*prefix, i))


@st.composite
def documents(draw: st.DrawFn, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """The base document with a few random edits: values replaced, keys added or removed,
    the node list grown or emptied."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from([p for p in paths(data) if p]))
        parent = data
        for part in where[:-1]:
            parent = parent[part]
        kind = draw(st.sampled_from(["replace", "add", "remove", "nodes"]))
        if kind == "replace":
            parent[where[-1]] = draw(toml_values)
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(toml_values)
        elif kind == "remove" and isinstance(parent, dict):
            parent.pop(where[-1], None)
        elif kind == "nodes":
            count = draw(st.sampled_from([0, 1, 2, 64, 65, 300]))
            data["nodes"] = [{"host": f"10.1.{i // 250}.{i % 250}"} for i in range(count)]
    return data


def assert_clean(problems: list[str], data: dict[str, Any]) -> None:
    assert problems
    for problem in problems:
        assert isinstance(problem, str) and "\n" not in problem and "Traceback" not in problem
        key, sep, reason = problem.partition(": ")
        assert sep and key and reason, problem
        head = key.split(".")[0].split("[")[0]
        assert head in ("config", "settings", *SECTIONS, *data), problem
        if key.rsplit(".", 1)[-1] in ("password", "replication_password", "token"):
            assert "(got" not in reason, problem  # what was given for a secret is not echoed


def load(data: dict[str, Any], tmp_path: Path) -> Loaded | None:
    try:
        return settings_from(data, tmp_path / "settings.toml")
    except SettingsError as exc:
        assert_clean(exc.problems, data)
        return None


@FUZZ
@given(data=documents())
def test_fuzz_settings_documents(data, tmp_path):
    loaded = load(data, tmp_path)
    if loaded is not None:  # whatever was accepted is usable as it is
        s = loaded.settings
        assert 3 <= len(s.nodes) <= 64
        assert s.probes.interval >= 0.05 and s.probes.timeout < s.probes.interval
        assert s.failover.recovery_block < float("inf")


CLUSTERS = {k: v for k, v in BASE.items() if k not in ("cluster", "nodes")} | {
    "clusters": [
        {"name": "one", "nodes": BASE["nodes"], "failover": {"max_lag": 5.0}},
        {
            "name": "two",
            "nodes": [{"host": f"10.2.0.{i}"} for i in range(3)],
            "router": {"proxysql": {"writer_hostgroup": 110, "reader_hostgroup": 120}},
        },
    ]
}


@FUZZ
@given(data=documents(CLUSTERS))
def test_fuzz_settings_cluster_documents(data, tmp_path):
    loaded = load(data, tmp_path)
    if loaded is not None:
        assert len({s.cluster.name.lower() for s in loaded.clusters}) == len(loaded.clusters)
        assert len({s.controller.journal for s in loaded.clusters}) == len(loaded.clusters)
        for s in loaded.clusters:
            assert 3 <= len(s.nodes) <= 64
            assert s.probes.timeout < s.probes.interval


@FUZZ
@given(data=st.dictionaries(keys, toml_values, max_size=6))
def test_fuzz_settings_random_documents(data, tmp_path):
    load(data, tmp_path)


@FUZZ
@given(
    raw=st.binary(max_size=400)
    | st.builds(lambda t, cut: t[:cut], st.just(BASE_TOML.encode()), st.integers(0, 900))
)
def test_fuzz_settings_file_bytes(raw, tmp_path):
    path = tmp_path / "settings.toml"
    path.write_bytes(raw)
    try:
        load_settings(path)
    except SettingsError as exc:
        assert all(p.split(": ", 1)[0] for p in exc.problems)


ENV = [
    "HACONTROL_NODES", "HACONTROL_PROBES__INTERVAL", "HACONTROL_API__HOST",
    "HACONTROL_API__TOKEN", "HACONTROL_MYSQL__PASSWORD", "HACONTROL_FAILOVER__RECOVERY_BLOCK",
    "HACONTROL_CONTROLLER__JOURNAL", "HACONTROL_ROUTER", "HACONTROL_API__PORT",
]  # fmt: skip


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@FUZZ
@given(
    env=st.dictionaries(
        st.sampled_from(ENV),
        st.text(alphabet=st.characters(exclude_characters="\x00", codec="utf-8"), max_size=40)
        | st.sampled_from(["[{", "[]", "nan", "inf", "1e-299", "true", '{"kind": 1}', "-5"]),
        max_size=3,
    )
)
def test_fuzz_settings_environment(env, tmp_path):
    with environment(env):
        load(copy.deepcopy(BASE), tmp_path)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(ENV), st.sampled_from(["[{", "[]", "nan", "1e-299",
       '{"kind": 1}', "-5", "10.2.0.1", '[{"host": "10.9.0.1"}]', "0.5"]), max_size=3))  # fmt: skip
def test_fuzz_settings_environment_with_clusters(env, tmp_path):
    with environment(env):
        load(copy.deepcopy(CLUSTERS), tmp_path)
