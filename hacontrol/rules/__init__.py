"""The rules of the pure core, by concern. None does I/O, sleeps or reads a clock.

- ``guards``: before anything else: start-up grace, no quorum, two writers, halted;
- ``failure``: a lost primary: failover, or why not (unreachable, no candidate, no primary);
- ``recovery``: after a failover: fence a returning old primary, rejoin it or keep it
  quarantined, repoint stray replicas;
- ``routing``: where every node should be routed, and reconciling the router to it;
- ``commands``: operator commands (switchover, maintenance, ack, pause, resume);
- ``alerts``: alert once per condition, forget it when the condition is gone, pause;
- ``candidates``: GTID positions, candidate ranking, the text of alerts.

``hacontrol.decide`` puts the automatic rules in one prioritized table.
"""
