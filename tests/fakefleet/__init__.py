"""A fake fleet of MariaDB 10.11 nodes: one asyncio process, one port per node.

It answers every statement the controller sends (the probe's multi-statement status query,
the watch connection's ``DO SLEEP``, flavor detection, the failover actions, user locks) the
way a healthy primary or replica does, with a real server's column definitions, and changes
its replication state when the controller acts, so that a failover runs end to end. Faults
(kill, freeze, a replica's lost link) are scripted in-process or over HTTP.

    async with FakeFleet(fleet([3, 3, 4])) as fake:   # three clusters, ports chosen freely
        host, port = fake.address("c001n1")
        fake.kill("c001n1")

Or as a process (benchmarks): ``python -m tests.fakefleet --nodes 1000`` (see __main__).
Layout: ``spec`` (the topology), ``history``/``model`` (replication state, pure), ``sql``
(parsing), ``answers`` (replies), ``wire`` (protocol), ``server`` (sockets, faults),
``control`` (HTTP), ``record`` (records a real server's answers into mariadb-10.11.json).
"""

from tests.fakefleet.server import FakeFleet
from tests.fakefleet.spec import ClusterSpec, FleetSpec, NodeSpec, fleet, settings_data

__all__ = ["ClusterSpec", "FakeFleet", "FleetSpec", "NodeSpec", "fleet", "settings_data"]
