"""The rules of the pure core, by concern. None does I/O, sleeps or reads a clock.

Automatic rules (``decide`` puts them in one prioritized table; view + state -> Decision):

- ``guards``: first: start-up grace, no quorum, two writers, halted;
- ``failure``: a lost primary: failover, or why not (blocked, no candidate, unreachable only
  from the controller, no primary); which nodes to re-probe at once;
- ``recovery``: after a failover: fence a returning old primary, rejoin it or keep it
  quarantined, repoint stray replicas;
- ``routing``: where every node should be routed, and reconciling the router to it;
- ``alerts``: alert once per condition, forget it when the condition is gone, pause.

Rules over the whole model (``step`` calls them; model + event -> model + effects):

- ``commands``: operator commands (ack, pause, resume, switchover, maintenance), deferred
  behind a running plan, always answered;
- ``outcomes``: after a plan: halt on a failed failover, back-offs, the settle wait;
- ``resume``: a journaled plan a restart cut: finish, roll back or abandon it;
- ``lifecycle``: starting a plan, recording a decision.

Shared: ``planned`` (switchover and maintenance plans with their pre-flight refusals),
``rollback`` (what undoes a plan stopped before its promotion), ``candidates`` (GTID positions,
candidate ranking, the texts alerts carry).
"""
