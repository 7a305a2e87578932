"""The OpenAPI 3.0 description of the HTTP API, served at ``GET /openapi.json``.

It is the contract the fuzzing tests hold the server to: every status the server can answer is
listed here, and every request body outside these schemas is answered 4xx.
"""

from __future__ import annotations

from typing import Any

from hacontrol import __version__

NODE_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
"""The same rule as ``nodes[].name`` in the settings."""
CLUSTER_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
"""The same rule as ``cluster.name`` (and ``clusters[].name``) in the settings."""
_CLUSTER = {"type": "string", "pattern": CLUSTER_NAME}

_ERROR = {"$ref": "#/components/schemas/Error"}
_ANSWER = {"$ref": "#/components/schemas/Answer"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _limited() -> dict[str, Any]:
    return {
        **_json(_ERROR, "too many requests from this client address"),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    }


def _read(summary: str, schema: dict[str, Any], *, probe: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json(schema, "ok"), "429": _limited()}
    responses["503"] = _json(
        _ERROR if not probe else {"$ref": "#/components/schemas/Probe"},
        "not alive / not ready, or the controller's event loop did not answer in time",
    )
    return {"get": {"summary": summary, "security": [], "responses": responses}}


def _command(summary: str, body: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """A command; ``cluster`` (required only when the process runs several clusters) names
    the cluster it is for. The query parameter ``?cluster=`` is accepted too (not described
    here: given with the body field, the two must agree, which a schema cannot say)."""
    body = {**body, "properties": {**body["properties"], "cluster": _CLUSTER}}
    return {
        "post": {
            "summary": summary,
            "description": "cluster: in the body, or as the query parameter ?cluster=NAME",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": required,
                "content": {"application/json": {"schema": body}},
            },
            "responses": {
                "200": _json(_ANSWER, "done"),
                "400": _json(
                    _ERROR,
                    "malformed request, or no cluster named while there are several; "
                    "nothing was sent to the controller",
                ),
                "401": _json(_ERROR, "no or wrong token; nothing was sent to the controller"),
                "404": _json(_ERROR, "no such cluster; nothing was sent to the controller"),
                "409": _json(_ANSWER, "refused by the controller"),
                "413": _json(_ERROR, "body too large"),
                "408": _json(_ERROR, "body not received in time"),
                "429": _limited(),
                "503": _json(_ERROR, "the controller is not running"),
                "504": _json(_ERROR, "no answer in time; the command may still run"),
            },
        }
    }


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _page(summary: str, media_type: str) -> dict[str, Any]:
    """A page read without a token (the status page, the metrics)."""
    return {
        "get": {
            "summary": summary,
            "security": [],
            "responses": {
                "200": {
                    "description": "ok",
                    "content": {media_type: {"schema": {"type": "string"}}},
                },
                "429": _limited(),
                "503": _json(_ERROR, "the controller's event loop did not answer"),
            },
        }
    }


def _read_paths() -> dict[str, Any]:
    """What is read: the pages, the probes, the status and this document."""
    return {
        "/": _page("the status page (HTML, reloads itself)", "text/html"),
        "/health": _read("liveness", {"$ref": "#/components/schemas/Probe"}, probe=True),
        "/ready": _read("readiness", {"$ref": "#/components/schemas/Probe"}, probe=True),
        "/status": _read("the controller's view", {"type": "object"}),
        "/metrics": _page("Prometheus text format 0.0.4", "text/plain"),
        "/openapi.json": _read("this document", {"type": "object"}),
    }


def _command_paths() -> dict[str, Any]:
    """The operator's commands (each with a bearer token)."""
    node = {"type": "string", "pattern": NODE_NAME}
    empty = _object({})
    return {
        "/switchover": _command(
            "planned switchover, to a node or to the best candidate",
            _object({"to": node}),
            required=False,
        ),
        "/maintenance": _command(
            "hide a replica (on) or bring it back (off); on, for a replica a failover waits "
            "for, also the consent to fail over without it (accepted when it is hidden already)",
            _object({"node": node, "on": {"type": "boolean"}}, ("node", "on")),
            required=True,
        ),
        "/rebuild": _command(
            "re-clone a fenced node from a healthy replica (answered when it starts; "
            "progress in /status); dry_run: only say whether and from where",
            _object({"node": node, "from": node, "dry_run": {"type": "boolean"}}, ("node",)),
            required=True,
        ),
        "/ack": _command("clear the halt and the recovery block", empty, required=False),
        "/pause": _command("stop automatic changes", empty, required=False),
        "/resume": _command("allow automatic changes", empty, required=False),
    }


def _components() -> dict[str, Any]:
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _object(
                {"ok": {"type": "boolean", "enum": [False]}, "message": {"type": "string"}},
                ("ok", "message"),
            ),
            "Answer": _object(
                {
                    "ok": {"type": "boolean"},
                    "message": {"type": "string"},
                    "detail": {"type": "object"},
                },
                ("ok", "message", "detail"),
            ),
            "Probe": _object(
                {"ok": {"type": "boolean"}, "reason": {"type": "string"}}, ("ok", "reason")
            ),
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "hacontrol", "version": __version__},
        "paths": {**_read_paths(), **_command_paths()},
        "components": _components(),
    }
