#!/usr/bin/env bash
# lockstep local demo: starts a MariaDB server with some data and a live
# writer, runs a lockstep agent beside it, takes a backup through the agent's
# two-phase protocol (PREPARE → COMMIT → TRANSFER), verifies it, restores it
# into a fresh server and shows that the data matches.
#
#   bash deploy/demo.sh            # everything on 127.0.0.1, cleaned up at exit
#   KEEP=1 bash deploy/demo.sh     # keep the temp dir (backup, logs) afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh
echo "--- building lockstep"
cargo build --quiet --bins
BIN="$PWD/target/debug"

WORK=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "--- preparing a MariaDB datadir template"
mariadb-install-db --no-defaults --datadir="$WORK/template" --user=root \
  --auth-root-authentication-method=normal --skip-test-db \
  --innodb-log-file-size=8M --innodb-buffer-pool-size=16M --skip-name-resolve >"$WORK/install.log" 2>&1

# start_server NAME ID → sets PORT_<NAME>
start_server() {
  local name=$1 id=$2 port dir
  port=$(free_port)
  dir="$WORK/$name"
  cp -a "$WORK/template" "$dir"
  mkdir -p "$dir.tmp"
  mariadbd --no-defaults --user=root --datadir="$dir" --socket="$dir/mysqld.sock" \
    --port="$port" --bind-address=127.0.0.1 --pid-file="$dir/mysqld.pid" --tmpdir="$dir.tmp" \
    --log-error="$dir/error.log" --server-id="$id" --gtid-domain-id="$id" \
    --log-bin=mysql-bin --binlog-format=ROW --innodb-buffer-pool-size=64M \
    --innodb-log-file-size=64M --skip-name-resolve --performance-schema=OFF >"$dir.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.05
  done
  mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null || { tail "$dir/error.log"; exit 1; }
  printf -v "PORT_$name" '%s' "$port"
  echo "    $name: mariadbd pid $! on 127.0.0.1:$port"
}

echo "--- starting servers"
start_server source 1
start_server restored 2
SQL_SRC="mariadb -h127.0.0.1 -P$PORT_source -uroot"
SQL_DST="mariadb -h127.0.0.1 -P$PORT_restored -uroot"

echo "--- writing data: shop.customers, shop.orders (200,000 rows), a view and a trigger"
$SQL_SRC <<'SQL'
CREATE DATABASE shop;
USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, country CHAR(2));
INSERT INTO customers SELECT seq, CONCAT('customer ', seq), ELT(1 + seq % 3, 'DE', 'FR', 'JP') FROM seq_1_to_1000;
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL, total DECIMAL(10,2), at DATETIME(6), KEY (customer));
INSERT INTO orders (customer, total, at) SELECT 1 + seq % 1000, (seq % 9973) / 100, NOW(6) FROM seq_1_to_200000;
CREATE TABLE order_log (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT);
CREATE TRIGGER orders_ai AFTER INSERT ON orders FOR EACH ROW INSERT INTO order_log (order_id) VALUES (NEW.id);
CREATE VIEW revenue AS SELECT c.country, SUM(o.total) AS total FROM orders o JOIN customers c ON c.id = o.customer GROUP BY c.country;
SQL

echo "--- starting a writer that keeps inserting orders during the backup"
( for i in $(seq 1 400); do
    $SQL_SRC -e "INSERT INTO shop.orders (customer, total, at) VALUES (1 + $i % 1000, $i, NOW(6))" 2>/dev/null || true
    sleep 0.01
  done ) &
WRITER=$!
PIDS+=($WRITER)

echo "--- starting the lockstep agent beside the source server"
AGENT_PORT=$(free_port)
"$BIN/lockstep-agent" serve --listen "127.0.0.1:$AGENT_PORT" --name source \
  --mysql "mysql://root@127.0.0.1:$PORT_source" --sink-dir "$WORK/backups" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do
  "$BIN/lockstep-agent" status --agent "http://127.0.0.1:$AGENT_PORT" >/dev/null 2>&1 && break
  sleep 0.05
done
"$BIN/lockstep-agent" status --agent "http://127.0.0.1:$AGENT_PORT"

echo "--- backup: PREPARE (lock + capture) → COMMIT (unlock) → TRANSFER (dump)"
"$BIN/lockstep-agent" cut --agent "http://127.0.0.1:$AGENT_PORT" --backup-id demo-1 --transfer | tee "$WORK/cut.log"
wait "$WRITER" || true
BACKUP="$WORK/backups/demo-1/source"

echo "--- the backup on disk"
find "$BACKUP" -type f | sort | sed "s|$WORK/||"
python3 - "$BACKUP/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
p, l = m["position"], m["lock"]
print(f"    position {p['binlog_file']}:{p['binlog_pos']} gtid {p['gtid_set']}")
print(f"    lock {l['method']}: waited {l['lock_wait_us']} us, held {l['held_us']} us")
for d in m["databases"]:
    for t in d["tables"]:
        print(f"    {d['name']}.{t['name']}: {t['rows']} rows in {len(t['chunks'])} file(s)")
PY

echo "--- verify checksums"
"$BIN/lockstep-agent" verify --from "$BACKUP"

echo "--- restore into a fresh server"
"$BIN/lockstep-agent" load --mysql "mysql://root@127.0.0.1:$PORT_restored" --from "$BACKUP"

echo "--- compare: the restored server is the source at the captured position"
ROWS=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sum(t['rows'] for d in m['databases'] for t in d['tables'] if t['name']=='orders'))" "$BACKUP/manifest.json")
GOT=$($SQL_DST -N -e "SELECT COUNT(*) FROM shop.orders")
NOW=$($SQL_SRC -N -e "SELECT COUNT(*) FROM shop.orders")
echo "    orders: backup $ROWS, restored $GOT, source now $NOW (the writer kept going after the cut)"
[ "$ROWS" = "$GOT" ]
# Replaying the source's binlog from the captured position must reproduce it exactly.
POS_FILE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['position']['binlog_file'])" "$BACKUP/manifest.json")
POS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['position']['binlog_pos'])" "$BACKUP/manifest.json")
mariadb-binlog --read-from-remote-server -h127.0.0.1 -P"$PORT_source" -uroot --start-position="$POS" "$POS_FILE" | $SQL_DST
A=$($SQL_SRC -N -e "CHECKSUM TABLE shop.customers, shop.orders, shop.order_log" | awk '{print $2}' | tr '\n' ' ')
B=$($SQL_DST -N -e "CHECKSUM TABLE shop.customers, shop.orders, shop.order_log" | awk '{print $2}' | tr '\n' ' ')
echo "    after replaying the binlog from the captured position: source [$A] restored [$B]"
[ "$A" = "$B" ]
echo "--- demo OK: backup consistent, restore verified"
