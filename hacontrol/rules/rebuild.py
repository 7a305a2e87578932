"""An operator's rebuild of a node (docs/rebuild.md), as one of the controller's plans. Pure.

The refusals are ``hacontrol.rebuild_checks`` over facts read from the view, plus what only
the controller knows: a node it keeps quarantined is fenced whatever the router says, a healthy
replica in service is not something to rebuild, quorum is needed. After the plan: a rebuilt
node leaves quarantine (the routing rule returns it to the readers once it is caught up); a
failed one stays where it was, with an alert.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Effect, SendAlert
from hacontrol.events import PlanFinished
from hacontrol.flavors.base import IoState
from hacontrol.model import ControllerState
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Rebuild
from hacontrol.rebuild_checks import Hostgroup, NodeFacts, check_rebuild
from hacontrol.rules.candidates import errant_between
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Health, NodeView, hidden_nodes


def plan_rebuild(
    view: ClusterView,
    state: ControllerState,
    settings: Settings,
    target: str | None,
    source: str | None,
) -> Plan | str:
    """The rebuild of ``target`` from ``source`` (or the best healthy replica), or why not."""
    if target is None:
        return "name the node to rebuild"
    for name in (target, source):
        if name is not None and name not in view.nodes:
            return f"unknown node {name!r}"
    if not view.quorum.ok:
        return f"no quorum: {view.quorum.describe()}"
    primary = view.primary
    if primary is None or not view.nodes[primary].reachable:
        return f"no reachable primary ({view.primary_reason}): nothing to replicate from"
    if why := in_service(view, state, target, primary):
        return why
    facts = node_facts(view, state)
    check = check_rebuild(facts, primary, target, source, settings.failover.max_lag)
    if not check.ok or check.source is None:
        return check.reason
    return Plan(
        "Rebuild",
        f"operator: {check.reason}; then a replica of {primary}",
        (Rebuild(target, check.source, primary),),
        kind=PlanKind.REBUILD,
    )


def in_service(view: ClusterView, state: ControllerState, target: str, primary: str) -> str | None:
    """A healthy replica of the primary that the controller routes: not a node to rebuild
    (whatever the router kind); put it in maintenance first to rebuild it all the same."""
    node = view.nodes[target]
    if target == primary or target in state.quarantined or target in hidden_nodes(view):
        return None
    if node.health is Health.HEALTHY and view.sources.get(target) == primary:
        return (
            f"{target} is a healthy replica in service: the controller has not fenced it "
            f"(put it in maintenance first to rebuild it anyway)"
        )
    return None


def node_facts(view: ClusterView, state: ControllerState) -> dict[str, NodeFacts]:
    """What ``check_rebuild`` needs of every node, from the view."""
    primary = view.primary
    reference = view.nodes[primary].status if primary is not None else None
    out = {}
    for name, node in view.nodes.items():
        status, channel = node.status, node.channel
        errant = errant_between(status, reference) if status and reference else None
        out[name] = NodeFacts(
            name=name,
            reachable=node.reachable,
            read_only=status.read_only if node.reachable and status else None,
            hostgroup=hostgroup(view, state, name),
            replicating=replicating(view, node, primary),
            lag=channel.seconds_behind if channel is not None else None,
            errant=errant.describe() if errant else "",
            flavor=status.flavor.value if status is not None else "mariadb",
        )
    return out


def hostgroup(view: ClusterView, state: ControllerState, name: str) -> Hostgroup | None:
    """The node's place in the router; without a router, "broken" for a node the controller
    quarantined or that is not healthy."""
    membership = view.router.membership
    if name in view.maintenance or (membership is not None and name in membership.hidden):
        return "hidden"
    if membership is not None:
        for group, members in (("writer", membership.writers), ("reader", membership.readers)):
            if name in members:
                return group  # type: ignore[return-value]
        if name in membership.broken:
            return "broken"
    if name in state.quarantined or view.nodes[name].health is not Health.HEALTHY:
        return "broken"
    return None


def replicating(view: ClusterView, node: NodeView, primary: str | None) -> bool:
    channel = node.channel
    return (
        primary is not None
        and view.sources.get(node.name) == primary
        and channel is not None
        and channel.io_state is IoState.RUNNING
        and channel.sql_running
    )


def after_rebuild(
    state: ControllerState, event: PlanFinished, plan: Plan | None
) -> tuple[ControllerState, tuple[Effect, ...]]:
    """Rebuilt: out of quarantine (readers once caught up). Failed: kept out, one alert."""
    action = plan.actions[0] if plan and plan.actions else None
    if not isinstance(action, Rebuild):
        return state, ()
    node = action.node
    if event.ok:
        quarantined = {k: v for k, v in state.quarantined.items() if k != node}
        return replace(state, quarantined=quarantined), ()
    alert = Notify(
        AlertKind.REBUILD_FAILED,
        node,
        f"rebuild of {node} failed",
        f"{event.reason}; {node} is kept out of service",
    )
    return state, (SendAlert(alert, Plan(event.rule, event.reason, kind=PlanKind.ALERT)),)
