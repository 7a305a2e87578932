"""The chaos drill's report: figures from the fault records and the checker. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hacontrol.drill.report import percentile


def stats(values: Iterable[float | None]) -> dict[str, float] | None:
    have = sorted(v for v in values if v is not None)
    if not have:
        return None
    return {
        "n": len(have),
        "p50": round(percentile(have, 50), 3),
        "max": round(have[-1], 3),
    }


def by_kind(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = sorted({r["kind"] for r in records})
    out = {}
    for kind in kinds:
        mine = [r for r in records if r["kind"] == kind]
        out[kind] = {
            "count": len(mine),
            "write_outage": stats(r["write_outage"] for r in mine),
            "read_outage": stats(r["read_outage"] for r in mine),
            "converged_after": stats(r["converged_after"] for r in mine),
        }
    return out


def verdict(doc: Mapping[str, Any]) -> list[str]:
    """What failed (empty: the soak passed)."""
    failed = []
    if doc["violations"]:
        failed.append(f"{len(doc['violations'])} violation(s)")
    final = doc["final"]
    if final.get("error"):
        failed.append(final["error"])
    if final.get("lost"):
        failed.append(f"{final['lost']} acknowledged write(s) lost")
    if final.get("checksums_equal") is False:
        failed.append(f"checksums differ: {final['checksums']}")
    if final.get("caught_up") and not all(final["caught_up"].values()):
        failed.append(f"replicas not caught up: {final['caught_up']}")
    if doc["unconverged"]:
        failed.append(f"not converged: {doc['unconverged']}")
    if doc.get("error"):
        failed.append(doc["error"])
    return failed


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(doc: Mapping[str, Any]) -> str:
    kinds = doc["by_kind"]
    lines = [
        f"chaos: seed {doc['seed']}, {doc['seconds']:.0f} s, {doc['faults']} faults, "
        f"router {doc['router']}",
        "",
        f"{'fault':<26}{'n':>4}  {'write outage p50/max s':>24}  {'read outage p50/max s':>23}"
        f"  {'converged p50/max s':>21}",
    ]
    for kind, row in kinds.items():
        cells = []
        for key in ("write_outage", "read_outage", "converged_after"):
            s = row[key]
            cells.append("-" if s is None else f"{_fmt(s['p50'])} / {_fmt(s['max'])}")
        lines.append(f"{kind:<26}{row['count']:>4}  {cells[0]:>24}  {cells[1]:>23}  {cells[2]:>21}")
    final = doc["final"]
    lines += [
        "",
        f"violations: {len(doc['violations'])}",
        *(f"  {v['t']:>9.3f} s  {v['kind']}: {v['detail']}" for v in doc["violations"]),
        f"returning writable nodes (fenced by the controller, outside the routers): "
        f"{len(doc['returning'])}"
        + (
            f", fenced after p50/max {_fmt(doc['returning_fenced']['p50'])} / "
            f"{_fmt(doc['returning_fenced']['max'])} s"
            if doc["returning_fenced"]
            else ""
        ),
        f"acknowledged writes: {final.get('acknowledged')}, lost: {final.get('lost')}",
        f"checksums equal on every node: {final.get('checksums_equal')}",
        f"converged at the end: {not doc['unconverged']}",
        f"halts acknowledged: {len(doc['halts'])}; nodes rebuilt (errant): {len(doc['rebuilt'])}",
        f"checker samples: {doc['samples']} node, {doc['router_samples']} router",
    ]
    failed = verdict(doc)
    lines.append("RESULT: " + ("PASS" if not failed else "FAIL: " + "; ".join(failed)))
    return "\n".join(lines)
