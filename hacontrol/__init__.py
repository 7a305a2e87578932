"""hacontrol: failover controller for MySQL/MariaDB replication clusters."""

__version__ = "0.1.0"
