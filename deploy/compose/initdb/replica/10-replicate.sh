# shellcheck shell=bash
# Sourced (keep it NOT executable) by the mariadb image's entrypoint, on a replica's first
# start only (empty datadir). CHANGE MASTER writes nothing to the binary log. Replication
# starts by itself when the real server starts (the init server is stopped right after);
# until db1 accepts connections the IO thread retries every MASTER_CONNECT_RETRY seconds.
# MASTER_HOST must be spelled exactly like the node's `host` in hacontrol's settings.toml:
# hacontrol recognises a replica's source by that string and port.
if ! declare -F docker_process_sql >/dev/null; then
	echo "10-replicate.sh must be sourced by the mariadb entrypoint, not executed" >&2
	exit 1
fi

repl_password=$(docker_sql_escape_string_literal "$(cat /run/secrets/repl_password)")

docker_process_sql <<EOSQL
CHANGE MASTER TO MASTER_HOST='db1', MASTER_PORT=3306, MASTER_USER='repl', MASTER_PASSWORD='${repl_password}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=5, MASTER_HEARTBEAT_PERIOD=1;
EOSQL
