#!/usr/bin/env bash
# lockstep cluster demo, everything on 127.0.0.1:
#
#   - 3 MariaDB servers (db1..db3), each a shard of a `shop` database;
#   - a CA and a certificate per process (`lockstep certs init`): every
#     connection between coordinators, agents and the CLI is mutual TLS, and
#     the CLI acts as the identity `operator`;
#   - 3 coordinators (a raft group) and 3 agents, one beside each server,
#     connecting as a least-privilege MySQL user `lockstep` (password in the
#     environment, not on the command line), registered as cluster "demo",
#     and a media agent holding a disk pool, the cluster's primary sink (the
#     backup leaves the servers' hosts);
#   - a writer that keeps inserting a causal chain across the servers
#     (record k goes to server k mod 3, each insert only after the previous
#     one committed) while the backup runs;
#   - one cluster-wide backup (`lockstep backup start --cluster demo --wait`),
#     the catalog, a restore of every server's artifact from the pool into
#     3 fresh servers (loaded by the media agent),
#     and the checks: the chain on the restored servers is exactly 1..m (no
#     gaps: one consistent cut), and every other table's CHECKSUM equals the
#     source's;
#   - the identity `viewer` refused a backup, `lockstep coordinator status`
#     (every member's transport) and `lockstep audit list` (who did what).
#
#   bash deploy/demo.sh            # cleaned up at exit
#   KEEP=1 bash deploy/demo.sh     # keep the temp dir (backups, logs, raft stores)
#   LOCKSTEP_BIN=target/release bash deploy/demo.sh   # use prebuilt binaries
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh
if [ -n "${LOCKSTEP_BIN:-}" ]; then
  BIN=$(cd "$LOCKSTEP_BIN" && pwd) # prebuilt binaries, e.g. target/release
else
  echo "--- building lockstep"
  cargo build --quiet --workspace --bins
  BIN="$PWD/target/debug"
fi

# Short path: MariaDB's socket path must stay under 107 bytes.
WORK=$(mktemp -d /tmp/lsdemo.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? i
  set +e
  # Stop in reverse start order: writer, agents, coordinators, servers.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do wait "${PIDS[i]}" 2>/dev/null; done
  if [ "$rc" -ne 0 ]; then
    echo "--- demo FAILED (exit $rc); last lines of the logs:" >&2
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# json_get FILE EXPR: evaluates a Python expression over the parsed JSON `j`.
json_get() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

echo "--- certificates for mutual TLS: lockstep certs init"
# A CA and one certificate per identity: coordinator-1..3 (a coordinator
# with raft id N must present coordinator-N), agent-<server name> for each
# agent, operator and viewer for the CLI. All valid for 127.0.0.1.
"$BIN/lockstep" certs init "$WORK/tls" --coordinator-count 3 --agent db1 --agent db2 --agent db3 --agent vault
# tls IDENTITY: the flags a process needs to speak mutual TLS as IDENTITY.
tls() { printf '%s\n' --tls-cert "$WORK/tls/$1.pem" --tls-key "$WORK/tls/$1.key" --tls-ca "$WORK/tls/ca.pem"; }
# The CLI is the operator (LOCKSTEP_TLS_*; the daemons get their own flags).
export LOCKSTEP_TLS_CERT="$WORK/tls/operator.pem" LOCKSTEP_TLS_KEY="$WORK/tls/operator.key" LOCKSTEP_TLS_CA="$WORK/tls/ca.pem"

echo "--- preparing a MariaDB datadir template"
mariadb-install-db --no-defaults --datadir="$WORK/template" --user=root \
  --auth-root-authentication-method=normal --skip-test-db \
  --innodb-log-file-size=8M --innodb-buffer-pool-size=16M --skip-name-resolve >"$WORK/install.log" 2>&1

# start_server NAME ID: starts mariadbd from the template on a free port
# (retrying if the port was taken meanwhile) and sets PORT_<NAME>.
start_server() {
  local name=$1 id=$2 dir="$WORK/$1" port pid attempt
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    rm -rf "$dir" "$dir.tmp"
    cp -a "$WORK/template" "$dir"
    mkdir -p "$dir.tmp"
    mariadbd --no-defaults --user=root --datadir="$dir" --socket="$dir/mysqld.sock" \
      --port="$port" --bind-address=127.0.0.1 --pid-file="$dir/mysqld.pid" --tmpdir="$dir.tmp" \
      --log-error="$dir/error.log" --server-id="$id" --gtid-domain-id="$id" \
      --log-bin=mysql-bin --binlog-format=ROW --skip-name-resolve --performance-schema=OFF \
      --innodb-buffer-pool-size=32M --innodb-log-file-size=32M --innodb-log-buffer-size=1M \
      --key-buffer-size=64K --aria-pagecache-buffer-size=1M --query-cache-size=0 \
      --max-connections=50 --table-open-cache=64 \
      --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 >"$dir.out" 2>&1 &
    pid=$!
    for _ in $(seq 1 500); do
      mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.02
    done
    if mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
      PIDS+=("$pid")
      printf -v "PORT_$name" '%s' "$port"
      echo "    $name: mariadbd pid $pid on 127.0.0.1:$port (server id $id, gtid domain $id)"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -qi 'in use' "$dir/error.log" 2>/dev/null || break
  done
  echo "error: $name did not start:" >&2
  tail -n 20 "$dir/error.log" >&2
  return 1
}
sql() { local p="PORT_$1"; shift; mariadb -h127.0.0.1 -P"${!p}" -uroot "$@"; }

echo "--- starting 3 MariaDB servers"
for i in 1 2 3; do start_server "db$i" "$i"; done

echo "--- starting 3 coordinators (one raft group)"
COORD_PORTS=()
for i in 1 2 3; do COORD_PORTS+=("$(free_port)"); done
PEERS="1=http://127.0.0.1:${COORD_PORTS[0]},2=http://127.0.0.1:${COORD_PORTS[1]},3=http://127.0.0.1:${COORD_PORTS[2]}"
COORDS="http://127.0.0.1:${COORD_PORTS[0]},http://127.0.0.1:${COORD_PORTS[1]},http://127.0.0.1:${COORD_PORTS[2]}"
for i in 1 2 3; do
  mapfile -t TLS < <(tls "coordinator-$i")
  "$BIN/lockstep-coordinator" --id "$i" --listen "127.0.0.1:${COORD_PORTS[i - 1]}" \
    --peers "$PEERS" --data-dir "$WORK/coord$i" "${TLS[@]}" >"$WORK/coord$i.log" 2>&1 &
  PIDS+=($!)
  echo "    coordinator $i: pid $! on 127.0.0.1:${COORD_PORTS[i - 1]}"
done
export LOCKSTEP_COORDINATORS="$COORDS"
LS="$BIN/lockstep"
for _ in $(seq 1 300); do
  "$LS" server list >/dev/null 2>&1 && break # served by the leader only
  sleep 0.05
done
"$LS" server list >/dev/null

echo "--- the agents' MySQL user: lockstep, with the least grants a backup needs (docs/agent.md)"
# The password reaches each agent in its environment (LOCKSTEP_MYSQL_PASSWORD),
# never on its command line, where every user of the host could read it in `ps`.
AGENT_PW=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
for i in 1 2 3; do
  sql "db$i" <<SQL
CREATE USER 'lockstep'@'127.0.0.1' IDENTIFIED BY '$AGENT_PW';
GRANT SELECT, RELOAD, PROCESS, BINLOG MONITOR, SHOW VIEW, EVENT, TRIGGER
  ON *.* TO 'lockstep'@'127.0.0.1';
SQL
done
sql db1 -N -e "SHOW GRANTS FOR 'lockstep'@'127.0.0.1'" | sed 's/PASSWORD .*/PASSWORD '"'"'…'"'"'/; s/^/    /'

echo "--- starting 3 agents, registered as cluster \"demo\""
for i in 1 2 3; do
  port=$(free_port)
  p="PORT_db$i"
  mapfile -t TLS < <(tls "agent-db$i")
  LOCKSTEP_MYSQL_PASSWORD="$AGENT_PW" \
    "$BIN/lockstep-agent" serve --listen "127.0.0.1:$port" --name "db$i" --cluster demo \
    --coordinators "$COORDS" --mysql "mysql://lockstep@127.0.0.1:${!p}" \
    --sink-dir "$WORK/backups" "${TLS[@]}" >"$WORK/agent$i.log" 2>&1 &
  PIDS+=($!)
  echo "    agent db$i: pid $! on 127.0.0.1:$port"
done
echo "--- starting a media agent (no database server) holding a disk pool"
port=$(free_port)
mkdir -p "$WORK/pool"
mapfile -t TLS < <(tls agent-vault)
"$BIN/lockstep-agent" serve --listen "127.0.0.1:$port" --name vault --cluster demo \
  --coordinators "$COORDS" --pool "$WORK/pool" --sink-dir "$WORK/vault-local" "${TLS[@]}" >"$WORK/vault.log" 2>&1 &
PIDS+=($!)
echo "    media agent vault: pid $! on 127.0.0.1:$port, pool $WORK/pool"
for _ in $(seq 1 300); do
  "$LS" --json server list >"$WORK/servers.json" 2>/dev/null || true
  [ "$(python3 -c '
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    print(0); sys.exit()
rows = j if isinstance(j, list) else j.get("servers", [])
print(sum(1 for s in rows if s.get("cluster", "demo") == "demo" and s.get("healthy", True)))
' "$WORK/servers.json")" = 4 ] && break
  sleep 0.1
done

echo "--- coordinator status"
"$LS" coordinator status
echo "--- server list"
"$LS" server list

echo "--- the backups leave the hosts: the media agent's pool is the primary sink"
"$LS" sink add pool --cluster demo --kind disk --agent vault --path "$WORK/pool"
"$LS" sink policy --cluster demo --primary pool
"$LS" sink list --cluster demo

echo "--- writing data: a sharded shop (customers, orders, a view and a trigger per server)"
for i in 1 2 3; do
  sql "db$i" <<SQL
CREATE DATABASE shop;
USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, country CHAR(2));
INSERT INTO customers SELECT seq, CONCAT('customer ', seq), ELT(1 + seq % 3, 'DE', 'FR', 'JP')
  FROM seq_1_to_3000 WHERE seq % 3 = $i - 1;
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL, total DECIMAL(10,2), at DATETIME(6), KEY (customer));
CREATE TABLE order_log (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT);
CREATE TRIGGER orders_ai AFTER INSERT ON orders FOR EACH ROW INSERT INTO order_log (order_id) VALUES (NEW.id);
INSERT INTO orders (customer, total, at)
  SELECT 3 * (seq % 1000) + $i - 1 + IF($i = 1, 3, 0), (seq % 9973) / 100, NOW(6) FROM seq_1_to_50000;
CREATE VIEW revenue AS SELECT c.country, SUM(o.total) AS total FROM orders o JOIN customers c ON c.id = o.customer GROUP BY c.country;
CREATE TABLE chain (k INT PRIMARY KEY, at DATETIME(6) NOT NULL);
SQL
  echo "    db$i: $(sql "db$i" -N -e 'SELECT COUNT(*) FROM shop.customers') customers, $(sql "db$i" -N -e 'SELECT COUNT(*) FROM shop.orders') orders"
done

echo "--- starting the causal-chain writer: record k on db(k mod 3), each after the previous committed"
(
  k=1
  while [ ! -e "$WORK/stop" ]; do
    s=$((k % 3 + 1))
    # Retry until it commits (INSERT IGNORE: a commit whose reply was lost is not an error).
    until sql "db$s" -e "INSERT IGNORE INTO shop.chain VALUES ($k, NOW(6))" 2>/dev/null; do sleep 0.02; done
    k=$((k + 1))
  done
) &
WRITER=$!
PIDS+=("$WRITER")
sleep 1
chain_total() { for i in 1 2 3; do sql "db$i" -N -e 'SELECT COUNT(*) FROM shop.chain'; done | awk '{s += $1} END {print s}'; }
echo "    $(chain_total) records so far"

echo "--- backup: lockstep backup start --cluster demo --wait"
"$LS" backup start --cluster demo --wait
sleep 0.5
touch "$WORK/stop"
wait "$WRITER"
SOURCE_CHAIN=$(chain_total)
echo "    the writer stopped after $SOURCE_CHAIN records"

echo "--- lockstep catalog list"
"$LS" catalog list
"$LS" --json catalog list --cluster demo >"$WORK/catalog.json"
ID=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
rows = j if isinstance(j, list) else j.get("backups", [])
print(rows[-1]["id"] if len(rows) == 1 else max(rows, key=lambda b: b.get("started_at_unix_ms", 0))["id"])
' "$WORK/catalog.json")
echo "--- lockstep catalog show $ID"
"$LS" catalog show "$ID"
"$LS" --json catalog show "$ID" >"$WORK/backup.json"
[ "$(json_get "$WORK/backup.json" 'j["status"]')" = COMPLETE ]
FREEZE=$(json_get "$WORK/backup.json" 'j["freeze_ms"]')

echo "--- restoring every server's artifact into 3 fresh servers"
for i in 1 2 3; do start_server "new$i" "$((10 + i))"; done
# The coordinated restore: every server at once from the pool, loaded by the
# media agent (the source agents are not needed), into the mapped target;
# checksums and row counts verified per server.
TARGETS=()
for i in 1 2 3; do p="PORT_new$i"; TARGETS+=(--target "db$i=mysql://root@127.0.0.1:${!p}"); done
echo "--- lockstep restore plan --backup $ID ${TARGETS[*]}"
"$LS" restore plan --backup "$ID" "${TARGETS[@]}"
echo "--- lockstep restore run --backup $ID ${TARGETS[*]} --wait"
"$LS" restore run --backup "$ID" "${TARGETS[@]}" --wait

echo "--- compare"
# The chain across the restored servers must be exactly 1..m, each record on its server.
for i in 1 2 3; do sql "new$i" -N -e "SELECT k, $i FROM shop.chain"; done >"$WORK/restored-chain.txt"
M=$(python3 - "$WORK/restored-chain.txt" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
ks = sorted(k for k, _ in rows)
m = len(ks)
missing = sorted(set(range(1, (ks[-1] if ks else 0) + 1)) - set(ks))
misplaced = [k for k, s in rows if k % 3 + 1 != s]
if missing or misplaced or ks != list(range(1, m + 1)):
    print(f"chain broken: missing {missing[:10]}, misplaced {misplaced[:10]}", file=sys.stderr)
    sys.exit(1)
print(m)
PY
)
echo "    causal chain on the restored servers: records 1..$M, no gaps (the source went on to $SOURCE_CHAIN)"
[ "$M" -gt 0 ]
[ "$M" -le "$SOURCE_CHAIN" ]
for i in 1 2 3; do
  A=$(sql "db$i" -N -e 'CHECKSUM TABLE shop.customers, shop.orders, shop.order_log' | awk '{print $2}' | tr '\n' ' ')
  B=$(sql "new$i" -N -e 'CHECKSUM TABLE shop.customers, shop.orders, shop.order_log' | awk '{print $2}' | tr '\n' ' ')
  echo "    db$i CHECKSUM customers, orders, order_log: source [${A% }] restored [${B% }]"
  [ "$A" = "$B" ] || { echo "error: db$i checksums differ" >&2; exit 1; }
  sql "new$i" -N -e 'SELECT COUNT(*) FROM shop.revenue' >/dev/null # the view works
done

echo "--- roles: the identity viewer may look, not start a backup"
if LOCKSTEP_TLS_CERT="$WORK/tls/viewer.pem" LOCKSTEP_TLS_KEY="$WORK/tls/viewer.key" \
  "$LS" backup start --cluster demo >"$WORK/viewer.out" 2>&1; then
  echo "error: the viewer started a backup" >&2
  exit 1
fi
sed 's/^/    /' "$WORK/viewer.out"
grep -q PermissionDenied "$WORK/viewer.out"

echo "--- lockstep coordinator status (every member's transport)"
"$LS" coordinator status
"$LS" --json coordinator status >"$WORK/status.json"
python3 - "$WORK/status.json" <<'PY'
import json, sys
members = json.load(open(sys.argv[1]))["members"]
wrong = [(m["id"], m.get("transport")) for m in members if m.get("transport") != f"mutual TLS as coordinator-{m['id']}"]
if len(members) != 3 or wrong:
    sys.exit(f"error: every member must speak mutual TLS as coordinator-<id>: {wrong} of {len(members)}")
PY
echo "--- lockstep audit list (who did what, and what was refused)"
"$LS" audit list
"$LS" --json audit list >"$WORK/audit.json"
python3 - "$WORK/audit.json" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))
def has(identity, call, outcome):
    return any(r["identity"] == identity and r["call"] == call and r["outcome"] == outcome for r in records)
if not (has("operator", "StartBackup", "ok") and has("operator", "RestoreBackup", "ok") and has("viewer", "StartBackup", "refused")):
    sys.exit("error: the audit trail lacks the operator's backup and restore or the viewer's refusal")
if any(r["plaintext"] for r in records):
    sys.exit("error: a plaintext call was audited")
PY
echo "--- demo OK: backup $ID of 3 servers over mutual TLS, freeze window $FREEZE ms, restored chain 1..$M without gaps, checksums equal"
