# shellcheck shell=bash
# Sourced (keep it NOT executable) by the mariadb image's entrypoint, on db1's first start
# only (empty datadir), so docker_process_sql and docker_sql_escape_string_literal exist.
# Runs with the binary log on: every statement replicates to db2 and db3, whose own
# initialisation writes nothing to their binary logs (no errant GTID on a fresh replica).
# Grants: least privilege, as hacontrol/sandbox/render.py (GRANTS) creates and checks them.
if ! declare -F docker_process_sql >/dev/null; then
	echo "10-users.sh must be sourced by the mariadb entrypoint, not executed" >&2
	exit 1
fi

secret() { docker_sql_escape_string_literal "$(cat "/run/secrets/$1")"; }

docker_process_sql <<EOSQL
CREATE USER 'hacontrol'@'%' IDENTIFIED BY '$(secret hacontrol_password)';
CREATE USER 'repl'@'%' IDENTIFIED BY '$(secret repl_password)';
CREATE USER 'app'@'%' IDENTIFIED BY '$(secret app_password)';
-- ProxySQL's monitor: connect and ping; SLAVE MONITOR only for its lag check (rows with
-- max_replication_lag > 0). No mysql_replication_hostgroups, so no read_only check.
CREATE USER 'monitor'@'%' IDENTIFIED BY '$(secret monitor_password)';
GRANT SLAVE MONITOR ON *.* TO 'monitor'@'%';
GRANT PROCESS, RELOAD, SLAVE MONITOR, BINLOG MONITOR, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, READ_ONLY ADMIN, CONNECTION ADMIN ON *.* TO 'hacontrol'@'%';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
CREATE DATABASE app;
-- The application: no SUPER, no READ_ONLY ADMIN, so read_only really stops its writes.
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON app.* TO 'app'@'%';
EOSQL
