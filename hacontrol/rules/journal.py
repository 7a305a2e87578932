"""When the journal cannot be written. Pure.

The journal lets a plan cut by a controller crash be finished (or undone) at the restart. It
is insurance against a rare event (the controller dying inside a plan's few seconds); a dead
primary is an outage that is already happening. So (docs/hardening.md):

- **A failover of a dead primary always runs**, journaled if it can be, without the journal if
  not (an alert says so). A crash inside an unjournaled failover leaves the restart to decide
  from the view, whose guards hold: a promoted node shows as the primary, a half-done
  promotion as "no primary" (alert, no change), a returning old primary as two writers (halt).
- **A plan past its Promote always goes on**: stopping between the promotion and the routing
  leaves no writer routed, which is worse than finishing without a record.
- **Every other journaled plan waits** (a switchover, a rejoin): it is not started while the
  journal is known to be unwritable (a command is refused with the reason; an automatic rejoin
  is retried once the journal is writable again), and one whose record fails while it runs
  stops after the step in flight, before its promotion, and is rolled back.
- The controller never dies of it: it alerts once when the journal becomes unwritable or
  runs low on room, keeps probing, re-checks periodically, and writes the state it kept in
  memory when the journal is writable again.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Effect, PersistState, SendAlert, Step, log
from hacontrol.events import JournalStatus
from hacontrol.model import JournalHealth, Model, persisted
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind

UNWRITABLE = "JournalUnwritable"


def goes_on_without_journal(plan: Plan, promoted: bool) -> bool:
    """A record of this running plan could not be written: does it go on (unjournaled)?"""
    return plan.kind is PlanKind.FAILOVER or promoted


def refusal(plan: Plan, journal: JournalHealth) -> Plan | None:
    """A plan that would be journaled, while the journal is known to be unwritable: the
    decision that withholds it (None: it may start)."""
    if journal.writable or not plan.kind.journaled or goes_on_without_journal(plan, False):
        return None
    reason = (
        f"the journal cannot be written ({journal.reason}): not doing {plan.rule} until it "
        f"can ({plan.reason})"
    )
    return Plan(UNWRITABLE, reason, kind=PlanKind.ALERT)


def journal_status(model: Model, event: JournalStatus, now: float) -> Step:
    """The journal's health changed (or was confirmed): alert on the way down, write the
    state kept in memory on the way back up."""
    before = model.state.journal
    after = JournalHealth(
        writable=event.writable,
        reason=event.reason,
        since=(before.since if not before.writable else now) if not event.writable else None,
        low=event.low if event.writable else before.low,
        free_bytes=event.free_bytes if event.free_bytes is not None else before.free_bytes,
    )
    model = replace(model, state=replace(model.state, journal=after))
    effects: list[Effect] = []
    if before.writable and not after.writable:
        effects += unwritable(event)
    elif not before.writable and after.writable:
        effects.append(log("journal_writable", None, "warning", free_bytes=event.free_bytes))
        effects.append(PersistState(persisted(model)))  # what only memory held meanwhile
    if after.writable and after.low and not before.low:
        effects += low_space(event)
    return model, tuple(effects)


def unwritable(event: JournalStatus) -> tuple[Effect, ...]:
    reason = (
        f"{event.reason}. A failover still runs (without a crash record); switchovers and "
        "rejoins wait; the state is kept in memory and written once the journal is writable"
    )
    alert = Notify(AlertKind.JOURNAL_UNWRITABLE, None, "the journal cannot be written", reason)
    return (
        log("journal_unwritable", None, "error", reason=event.reason),
        SendAlert(alert, Plan(UNWRITABLE, reason, kind=PlanKind.ALERT)),
    )


def low_space(event: JournalStatus) -> tuple[Effect, ...]:
    free = event.free_bytes or 0
    reason = (
        f"{free // 1024} KiB free on the journal's filesystem: free some room before records "
        "cannot be written"
    )
    alert = Notify(AlertKind.JOURNAL_LOW_SPACE, None, "the journal's disk is nearly full", reason)
    return (
        log("journal_low_space", None, "warning", free_bytes=free),
        SendAlert(alert, Plan("JournalLowSpace", reason, kind=PlanKind.ALERT)),
    )
