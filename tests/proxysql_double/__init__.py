"""A test double for ProxySQL 2.7.1's admin interface (MySQL protocol over TCP).

See tests/README.md, section "ProxySQL admin double", for what it emulates and what it does not.
"""

from tests.proxysql_double.admin import normalize
from tests.proxysql_double.real import (
    ProxySQLAdmin,
    RealProxySQL,
    proxysql_config,
    start_proxysql_admin,
)
from tests.proxysql_double.schema import PROXYSQL_VERSION, ReplicationHostgroupRow, ServerRow
from tests.proxysql_double.server import ProxySQLAdminDouble, ThreadedProxySQLDouble

__all__ = [
    "PROXYSQL_VERSION",
    "ProxySQLAdmin",
    "ProxySQLAdminDouble",
    "RealProxySQL",
    "ReplicationHostgroupRow",
    "ServerRow",
    "ThreadedProxySQLDouble",
    "normalize",
    "proxysql_config",
    "start_proxysql_admin",
]
