# The agent's MySQL user, created on a database server's first start.
#
# The MariaDB image's entrypoint sources this file (it is not executable)
# from /docker-entrypoint-initdb.d once, when the datadir is empty, after
# root is set up. It creates 'lockstep'@'127.0.0.1' with the least grants a
# backup needs (docs/agent.md, "MySQL user and grants"); the password comes
# from LOCKSTEP_MYSQL_PASSWORD in the server's environment, the same
# variable the agent reads. The agent reaches its server on 127.0.0.1 (it
# shares the server's network), so the user cannot log in from elsewhere.
# No REQUIRE SSL (docs/agent.md adds it with TLS): the session never leaves
# the loopback interface, and the image serves no TLS unless given ssl_cert
# and ssl_key. A datadir that already exists: run the statements by hand.
# deploy/k8s/mariadb.yaml carries the same script (ConfigMap mariadb-init).
if [ -z "${LOCKSTEP_MYSQL_PASSWORD:-}" ]; then
  mysql_error "LOCKSTEP_MYSQL_PASSWORD is not set: cannot create the lockstep user"
fi
docker_process_sql --database=mysql <<EOSQL
SET SESSION sql_log_bin = 0;
CREATE USER 'lockstep'@'127.0.0.1' IDENTIFIED BY '$(docker_sql_escape_string_literal "$LOCKSTEP_MYSQL_PASSWORD")';
GRANT SELECT, RELOAD, PROCESS, BINLOG MONITOR, SHOW VIEW, EVENT, TRIGGER
  ON *.* TO 'lockstep'@'127.0.0.1';
EOSQL
