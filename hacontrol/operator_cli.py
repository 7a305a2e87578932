"""Operator commands: ``hacontrol switchover|maintenance|rebuild|ack|pause|resume`` call the
running controller's HTTP API (``hacontrol.api``) and print its answer.

Every command takes ``--cluster NAME``: required only when the controller runs several
clusters (the settings' ``[[clusters]]``); without it, or with a name it does not run, the
command exits 2 naming the clusters (checked in the settings when they are read, else by the
API: 400 or 404).

``rebuild NODE [--from NODE] [--yes]`` asks the controller first (a dry run: refused, or the
source it would copy from), asks for confirmation unless ``--yes``, starts the rebuild with that
very source, then follows its progress in ``GET /status`` (phase, bytes, rate, ETA on stderr)
until it ends: exit 0 rebuilt, 1 refused or failed.

The API address comes from ``--url`` or from the settings (``api.host``/``api.port``, https
when ``api.tls_cert`` is set, ``unix://<path>`` when ``api.socket`` is); the token from
``HACONTROL_API__TOKEN`` or the settings (``api.token`` / ``api.token_file``). The settings file
is read only when one of them is missing. Over https the API's certificate is checked against
``api.tls_ca`` (or ``HACONTROL_API__TLS_CA``), else the system's CAs.

Exit codes: 0 done, 1 refused by the controller (its message says why), 2 usage or
configuration error (no token, wrong token, malformed request), 3 the API could not be
reached or the controller did not answer (a 504 means the command may still run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from hacontrol.settings import SettingsError, load_settings

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

TOKEN_ENV = "HACONTROL_API__TOKEN"
CA_ENV = "HACONTROL_API__TLS_CA"
HTTP_TIMEOUT = 75.0
"""Seconds to wait for an answer; longer than the API's own 60 s wait for the controller."""


class UsageError(Exception):
    """Configuration or usage problem: exit 2."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str
    cafile: str | None = None


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "switchover",
        help="planned switchover of the primary (via the running controller's API)",
    )
    p.add_argument("--to", metavar="NODE", help="the new primary (default: the best candidate)")
    _common(p, "switchover")

    p = subparsers.add_parser(
        "maintenance",
        help="hide a node from routing and promotion, never from the quorum (on) or bring it "
        "back (off); on, for a "
        "replica a failover waits for, also consent to fail over without it (docs/partitions.md)",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument("state", choices=("on", "off"))
    _common(p, "maintenance")

    p = subparsers.add_parser(
        "rebuild",
        help="re-clone a fenced node from a healthy replica (mariadb-backup), then rejoin it",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument("--from", dest="source", metavar="NODE", help="the replica to copy from "
                   "(default: the healthy replica with the lowest lag)")  # fmt: skip
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between progress reads")
    _common(p, "rebuild")

    for name, text in (
        ("ack", "acknowledge: clear a halt and the recovery block after a failover"),
        ("pause", "pause automatic changes (the controller keeps observing)"),
        ("resume", "resume automatic changes after a pause"),
    ):
        _common(subparsers.add_parser(name, help=text), name)


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file, for api.host/port/token (default: $HACONTROL_CONFIG, else "
        "./settings.toml)",
    )
    parser.add_argument(
        "--url",
        help="API base URL, e.g. http://127.0.0.1:8008, https://..., unix:///run/hacontrol.sock "
        "(overrides)",
    )
    parser.add_argument(
        "--timeout", type=float, default=HTTP_TIMEOUT, help=f"seconds (default {HTTP_TIMEOUT:g})"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="the cluster (required only when the controller runs several)",
    )
    parser.set_defaults(func=run, command_name=name)


def request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the API call for the parsed command line. Pure."""
    cluster = {"cluster": args.cluster} if getattr(args, "cluster", None) else {}
    match args.command_name:
        case "switchover":
            return "/switchover", {**({"to": args.to} if args.to else {}), **cluster}
        case "maintenance":
            return "/maintenance", {"node": args.node, "on": args.state == "on", **cluster}
        case "rebuild":
            source = {"from": args.source} if args.source else {}
            return "/rebuild", {"node": args.node, **source, **cluster}
        case name:
            return f"/{name}", cluster


def endpoint(args: argparse.Namespace, env: dict[str, str] | os._Environ[str]) -> Endpoint:
    """API URL and token from the options, the environment and (if needed) the settings."""
    url: str | None = args.url
    token = env.get(TOKEN_ENV) or None
    cafile = env.get(CA_ENV) or None
    if url is None or token is None:
        try:
            loaded = load_settings(args.config)
        except SettingsError as exc:
            raise UsageError("settings error: " + "; ".join(exc.problems)) from None
        try:  # the cluster, checked here when the settings are at hand (else by the API)
            loaded.pick(getattr(args, "cluster", None))
        except SettingsError as exc:
            raise UsageError("; ".join(exc.problems)) from None
        api = loaded.settings.api
        if url is None:
            url = api_url(api.host, api.port, api.socket, tls=api.tls_cert is not None)
        if token is None and api.token is not None:
            token = api.token.get_secret_value()
        if cafile is None and api.tls_ca is not None:
            cafile = str(api.tls_ca)
    if not token:
        raise UsageError(f"no API token: set api.token or api.token_file, or {TOKEN_ENV}")
    return Endpoint(url.rstrip("/"), token, cafile)


def api_url(host: str, port: int, path: object | None, *, tls: bool) -> str:
    """The API's base URL from its settings. Pure."""
    if path is not None:
        return f"unix://{path}"
    if port == 0:
        raise UsageError("api.port is 0 (any free port): give the address with --url")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def call(
    ep: Endpoint, path: str, body: dict[str, Any] | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the API (GET when None): (HTTP status, JSON answer). OSError when
    unreachable."""
    data = json.dumps(body).encode() if body is not None else None
    method = "POST" if body is not None else "GET"
    headers = {"Authorization": f"Bearer {ep.token}", "Content-Type": "application/json"}
    if ep.url.startswith("unix://"):
        status, raw = _post_unix(
            ep.url.removeprefix("unix://"), path, data, headers, timeout, method
        )
    else:
        request = urllib.request.Request(ep.url + path, data=data, method=method, headers=headers)
        context = ssl.create_default_context(cafile=ep.cafile) if ep.cafile else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"ok": False, "message": raw.decode(errors="replace")[:500]}
    if not isinstance(answer, dict):
        answer = {"ok": False, "message": str(answer)[:500]}
    return status, answer


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (``api.socket``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _post_unix(
    socket_path: str,
    path: str,
    data: bytes | None,
    headers: dict[str, str],
    timeout: float,
    method: str = "POST",
) -> tuple[int, bytes]:
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def exit_code(status: int) -> int:
    if status == 200:
        return EXIT_OK
    if status == 409:
        return EXIT_REFUSED
    if 400 <= status < 500:
        return EXIT_USAGE
    return EXIT_UNREACHABLE


def run(args: argparse.Namespace) -> int:
    try:
        ep = endpoint(args, os.environ)
    except UsageError as exc:
        print(f"hacontrol: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path, body = request_of(args)
    if args.command_name == "rebuild":
        return run_rebuild(args, ep, body)
    try:
        status, answer = call(ep, path, body, args.timeout)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"hacontrol: cannot reach the API at {ep.url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    code = exit_code(status)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif code in (EXIT_OK, EXIT_REFUSED):
        print(answer.get("message", ""))
        if answer.get("detail"):
            print(json.dumps(answer["detail"], indent=2))
    else:
        print(f"hacontrol: API answered {status}: {answer.get('message', '')}", file=sys.stderr)
    return code


def run_rebuild(args: argparse.Namespace, ep: Endpoint, body: dict[str, Any]) -> int:
    """Dry run, confirmation, start with the confirmed source, then follow to the end."""
    try:
        status, answer = call(ep, "/rebuild", {**body, "dry_run": True}, args.timeout)
        if status != 200:
            return _said(args, status, answer)
        detail = answer.get("detail") or {}
        print(answer.get("message", ""))
        if not args.yes and not confirmed(detail.get("node"), detail.get("source")):
            print("not rebuilt", file=sys.stderr)
            return EXIT_REFUSED
        start = {"node": detail["node"], "from": detail["source"]}
        status, answer = call(ep, "/rebuild", start, args.timeout)
        if status != 200:
            return _said(args, status, answer)
        print(answer.get("message", ""))
        return follow(args, ep, (answer.get("detail") or {}).get("plan"))
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"hacontrol: cannot reach the API at {ep.url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE


def confirmed(node: str | None, source: str | None) -> bool:
    """Ask on the terminal; no terminal: refuse (use --yes in scripts)."""
    if not sys.stdin.isatty():
        print("hacontrol: not a terminal: confirm with --yes", file=sys.stderr)
        return False
    reply = input(f"Replace the data of {node} with a copy of {source}'s? [y/N] ")
    return reply.strip().lower() in ("y", "yes")


def follow(args: argparse.Namespace, ep: Endpoint, plan: str | None) -> int:
    """Print the rebuild's progress (stderr) from ``GET /status`` until it ends."""
    shown, seen = "", set()
    while True:
        status, answer = call(ep, "/status", None, args.timeout)
        if status != 200:  # the controller busy or restarting: the rebuild goes on regardless
            time.sleep(args.poll)
            continue
        answer = cluster_status(answer, getattr(args, "cluster", None))
        rebuild = answer.get("rebuild")
        if not isinstance(rebuild, dict) or rebuild.get("plan") != plan:
            if (answer.get("controller") or {}).get("plan_running") == plan:
                time.sleep(args.poll)  # started, its first step not reported yet
                continue
            print(f"hacontrol: the controller no longer reports {plan} (restarted?): "
                  "its outcome is in the controller's log", file=sys.stderr)  # fmt: skip
            return EXIT_UNREACHABLE
        line = str(rebuild.get("line") or rebuild.get("phase"))
        if line != shown:
            copy = rebuild.get("copy_line")
            if copy and copy not in seen and not line.startswith("copy"):
                print(copy, file=sys.stderr)  # a copy faster than the polling: its last word
            print(line, file=sys.stderr, flush=True)
            shown = line
            seen |= {line, copy}
        if not rebuild.get("running"):
            print(rebuild.get("reason", ""))
            if args.json:
                print(json.dumps(rebuild, indent=2))
            return EXIT_OK if rebuild.get("ok") else EXIT_REFUSED
        time.sleep(args.poll)


def cluster_status(status: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """One cluster's part of a ``GET /status`` answer (the whole answer for the only one)."""
    clusters = status.get("clusters")
    if cluster is None or not isinstance(clusters, dict):
        return status
    mine = clusters.get(cluster)
    return mine if isinstance(mine, dict) else {}


def _said(args: argparse.Namespace, status: int, answer: dict[str, Any]) -> int:
    code = exit_code(status)
    if code == EXIT_REFUSED:
        print(answer.get("message", ""))
    else:
        print(f"hacontrol: API answered {status}: {answer.get('message', '')}", file=sys.stderr)
    return code
