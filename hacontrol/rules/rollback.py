"""What undoes a plan that stopped before its point of no return. Pure.

The executor asks right after a required action failed, with the facts of the run: which IO
threads the plan itself stopped. A plan past its Promote is never undone (it is finished, by
the resume rules if need be); a plan whose Promote itself failed is undone only when the
candidate is still read-only, checked on the node first (never two writers), a switchover's
and a failover's alike.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.plan import Action, Notify, Plan, PlanKind, RequireReadOnly, SetIOThreads


def rollback_actions(
    plan: Plan, failed_at: int, stopped_io: frozenset[str], cause: str
) -> tuple[Action, ...]:
    """The actions undoing ``plan`` stopped at ``failed_at``; () when nothing is undone.

    ``stopped_io``: the IO threads this run stopped (only those are started again, never an
    operator's). ``cause``: why the plan stopped, added to the rollback's alert."""
    no_return = plan.point_of_no_return
    if not plan.rollback or failed_at > no_return:
        return ()
    out: list[Action] = []
    promote = plan.promote
    candidate = None
    if failed_at == no_return and promote is not None:
        # Promote failed: its candidate is not writable unless the failure came after
        # read_only=OFF (Promote checks it last). Making the old primary writable again
        # would then make two writers; a failover's replicas started again would testify
        # the primary dead and erase the trace a next leader's guard reads (the next
        # failover would promote another replica beside it): read-only, checked first.
        out.append(RequireReadOnly(promote.node))
        if plan.kind is PlanKind.FAILOVER:
            candidate = promote.node  # its replication may be reset: its IO thread stays
    for action in plan.rollback:
        if isinstance(action, SetIOThreads) and action.running:
            nodes = tuple(n for n in action.nodes if n in stopped_io and n != candidate)
            if not nodes:
                continue
            action = replace(action, nodes=nodes)
        elif isinstance(action, Notify):
            action = replace(action, reason=f"{action.reason}; cause: {cause}")
        out.append(action)
    return tuple(out)
