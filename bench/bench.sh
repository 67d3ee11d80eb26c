#!/usr/bin/env bash
# lockstep benchmark: lockstep-agent against mydumper/myloader, mariadb-dump
# and mariadb-backup, on the same generated data, on this machine.
#
#   bash bench/bench.sh                 # default size (see below)
#   SMALL=1 bash bench/bench.sh         # quick check (seconds)
#   BIG=1 bash bench/bench.sh           # also one table of BIG_ROWS rows (agent RSS)
#
# Environment (defaults in brackets; SMALL=1 changes the size defaults):
#   TABLES [4] ROWS [1000000]  sysbench-like tables and rows per table
#   THREADS [2]                threads/connections of every parallel tool
#   BIG [0] BIG_ROWS [4000000] one extra table, lockstep dump+load only
#   ALT_ZSTD_LEVEL [3]         a second lockstep dump at this zstd level
#   LOCK_METHOD [auto]         lock primitive of the agent: auto, backup-stage, ftwrl
#   SYNC_BINLOG [0]            --sync-binlog of every server
#   CUTS [20]                  cuts measured under write load, and idle
#   WRITERS [4] WRITE_SECONDS [120] background writer clients (time bound)
#   WRITE_STATEMENTS [200000]  statements per writer (count bound)
#   BENCH_TMP [/tmp]           where servers and dumps live (short path: sockets)
#   KEEP [0]                   keep the temp dir at the end
#   UPDATE_MD [1]              rewrite the results block of BENCHMARKS.md
#
# Every server and agent this script starts is stopped by its PID on exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMALL=${SMALL:-0}
BIG=${BIG:-0}
if [[ $SMALL == 1 ]]; then
  TABLES=${TABLES:-2}
  ROWS=${ROWS:-20000}
  BIG_ROWS=${BIG_ROWS:-80000}
  WRITE_SECONDS=${WRITE_SECONDS:-60}
else
  TABLES=${TABLES:-4}
  ROWS=${ROWS:-1000000}
  BIG_ROWS=${BIG_ROWS:-4000000}
  WRITE_SECONDS=${WRITE_SECONDS:-120}
fi
THREADS=${THREADS:-2}
CUTS=${CUTS:-20}
WRITERS=${WRITERS:-4}
WRITE_STATEMENTS=${WRITE_STATEMENTS:-200000}
BENCH_TMP=${BENCH_TMP:-/tmp}
KEEP=${KEEP:-0}
UPDATE_MD=${UPDATE_MD:-1}
OUT_MD=${OUT_MD:-$REPO/BENCHMARKS.md}
BUILT_AGENT=$REPO/target/release/lockstep-agent
ALT_ZSTD_LEVEL=${ALT_ZSTD_LEVEL:-3}
LOCK_METHOD=${LOCK_METHOD:-auto}
SYNC_BINLOG=${SYNC_BINLOG:-0}
DB=bench
CLK_TCK=$(getconf CLK_TCK)

# Settings shared by every server (source and restore targets).
SERVER_OPTS=(
  --innodb-buffer-pool-size=256M
  --innodb-log-file-size=256M
  --innodb-flush-log-at-trx-commit=2
  --sync-binlog="$SYNC_BINLOG"
  --log-bin=mysql-bin
  --binlog-format=ROW
  --skip-name-resolve
  --performance-schema=OFF
  --max-connections=100
  --character-set-server=utf8mb4
  --collation-server=utf8mb4_general_ci
)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
WORK=""
SERVER_PIDS=()
OTHER_PIDS=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${OTHER_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null; fi
  done
  for pid in "${OTHER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  for pid in "${SERVER_PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP == 1 || $rc != 0 ]]; then
      log "temp dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process we started: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

forget_server() { # remove a PID from SERVER_PIDS after stopping it
  local pid=$1 p keep=()
  for p in "${SERVER_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  SERVER_PIDS=("${keep[@]}")
}

# ------------------------------------------------------------ tools check
need_pkgs=()
for t in mariadbd:mariadb-server mariadb-install-db:mariadb-server mariadb:mariadb-client \
         mariadb-dump:mariadb-client mariadb-backup:mariadb-backup mydumper:mydumper \
         myloader:mydumper; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need_pkgs+=("${t#*:}")
done
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
command -v jq >/dev/null 2>&1 || need_pkgs+=(jq)
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) == 0 ]]; then
    log "installing: ${need_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    die "missing tools (packages: ${need_pkgs[*]}); install them or run as root"
  fi
fi
[[ $(id -u) == 0 ]] && RUN_AS=(--user=root) || RUN_AS=()

log "building lockstep-agent (release)"
(cd "$REPO" && cargo build --release -q -p lockstep-node-agent)
[[ -x $BUILT_AGENT ]] || die "$BUILT_AGENT was not built"

WORK=$(mktemp -d "$BENCH_TMP/lsb.XXXXXX")
# Run a private copy: a rebuild in the work tree during the run must not
# swap the binary between two measurements.
AGENT=$WORK/lockstep-agent
cp "$BUILT_AGENT" "$AGENT"
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain -- node-agent proto Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
DEFAULT_ZSTD_LEVEL=$("$AGENT" dump --help | awk '/--zstd-level/ { f = 1 } f && /\[default:/ { gsub(/.*default: |\].*/, ""); print; exit }')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_START=$(date +%s)
mkdir -p "$WORK/res"
log "work dir $WORK; TABLES=$TABLES ROWS=$ROWS THREADS=$THREADS BIG=$BIG"

# ---------------------------------------------------------------- servers
TEMPLATE=$WORK/template
log "creating template datadir"
mariadb-install-db --no-defaults --datadir="$TEMPLATE" "${RUN_AS[@]}" \
  --auth-root-authentication-method=normal --skip-test-db \
  --innodb-log-file-size=256M --innodb-buffer-pool-size=64M --skip-name-resolve \
  >"$WORK/install-db.log" 2>&1 || { tail -20 "$WORK/install-db.log"; die "mariadb-install-db"; }

NEXT_PORT=$((20000 + RANDOM % 20000))
NEXT_ID=1
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  echo "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

# start_server DATADIR: starts mariadbd on DATADIR (which must exist) and sets
# SRV_PID and SRV_PORT. Retries with another port if the port was taken.
start_server() {
  local d=$1 try i port pid
  for try in 1 2 3 4 5; do
    port=$(free_port)
    : >"$d/error.log"
    mariadbd --no-defaults "${RUN_AS[@]}" --datadir="$d" --socket="$d/s.sock" \
      --port="$port" --bind-address=127.0.0.1 --pid-file="$d/mysqld.pid" \
      --log-error="$d/error.log" --server-id=$NEXT_ID --gtid-domain-id=$NEXT_ID \
      "${SERVER_OPTS[@]}" >/dev/null 2>&1 &
    pid=$!
    NEXT_ID=$((NEXT_ID + 1))
    for ((i = 0; i < 6000; i++)); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if mariadb -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        SERVER_PIDS+=("$pid")
        SRV_PID=$pid SRV_PORT=$port
        return 0
      fi
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then stop_pid "$pid"; fi
    wait "$pid" 2>/dev/null || true
    if grep -q 'Address already in use' "$d/error.log"; then continue; fi
    tail -20 "$d/error.log" >&2
    die "server on $d did not start"
  done
  die "no free port after 5 tries"
}

new_server() { # new_server NAME: fresh datadir from the template, started
  local d=$WORK/$1
  cp -a "$TEMPLATE" "$d"
  start_server "$d"
}

stop_server() { stop_pid "$1"; forget_server "$1"; }

sql() { local port=$1; shift; mariadb -h127.0.0.1 -P"$port" -uroot -N -B "$@"; }

cpu_ticks() { # user+system ticks of a PID
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# ------------------------------------------------------------- data
# A sysbench-like table: c is 11 groups of 11 random digits, pad 5 groups.
digits() { # digits N: SQL for N '-'-separated groups of 11 random digits
  local n=$1 i parts=()
  for ((i = 0; i < n; i++)); do parts+=("LPAD(FLOOR(RAND()*100000000000),11,'0')"); done
  local IFS=,
  echo "CONCAT_WS('-',${parts[*]})"
}
C_EXPR=$(digits 10)
PAD_EXPR=$(digits 5)

create_table() { # create_table PORT DB TABLE ROWS
  local port=$1 db=$2 t=$3 n=$4
  sql "$port" -e "SET SESSION sql_log_bin=0;
    CREATE DATABASE IF NOT EXISTS \`$db\`; USE \`$db\`;
    CREATE TABLE \`$t\` (id INT NOT NULL, k INT NOT NULL DEFAULT 0,
      c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '',
      PRIMARY KEY (id), KEY k_1 (k)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
    INSERT INTO \`$t\` SELECT seq, FLOOR(1 + RAND()*$n), $C_EXPR, $PAD_EXPR FROM seq_1_to_$n;"
}

checksums() { # checksums PORT DB: "table checksum" lines, sorted
  local port=$1 db=$2 tables t
  tables=$(sql "$port" -e "SELECT table_name FROM information_schema.tables
    WHERE table_schema='$db' AND table_type='BASE TABLE' ORDER BY table_name")
  for t in $tables; do sql "$port" -e "CHECKSUM TABLE \`$db\`.\`$t\`"; done
}

verify_restore() { # verify_restore PORT LABEL
  local port=$1 label=$2
  checksums "$port" "$DB" >"$WORK/res/checksum-$label.txt"
  if ! diff -u "$WORK/res/checksum-source.txt" "$WORK/res/checksum-$label.txt" >&2; then
    die "$label: CHECKSUM TABLE differs from the source"
  fi
  log "$label: checksums of $(wc -l <"$WORK/res/checksum-source.txt") tables match the source"
}

# -------------------------------------------------------------- timing
# timed LABEL SERVER_PID CMD...: runs CMD under /usr/bin/time, records wall
# seconds, peak RSS (KiB) and CPU seconds of CMD and of the server process.
declare -A WALL RSS CPU SCPU SIZE
timed() {
  local label=$1 spid=$2; shift 2
  local before after w m u s
  before=$(cpu_ticks "$spid")
  if ! /usr/bin/time -f '%e %M %U %S' -o "$WORK/res/time-$label" "$@" \
      >"$WORK/res/out-$label" 2>"$WORK/res/err-$label"; then
    tail -30 "$WORK/res/err-$label" >&2
    die "$label failed: $*"
  fi
  after=$(cpu_ticks "$spid")
  read -r w m u s <"$WORK/res/time-$label"
  WALL[$label]=$w
  RSS[$label]=$m
  CPU[$label]=$(awk -v u="$u" -v s="$s" 'BEGIN{printf "%.1f", u + s}')
  SCPU[$label]=$(awk -v a="$before" -v b="$after" -v t="$CLK_TCK" 'BEGIN{printf "%.1f", (b - a) / t}')
  log "$label: ${w}s wall, peak RSS $((m / 1024)) MiB, tool CPU ${CPU[$label]}s, server CPU ${SCPU[$label]}s"
}

bytes_of() { du -sb "$1" | awk '{print $1}'; }

# ================================================================ run
log "starting source server"
new_server src
SRC_PID=$SRV_PID SRC_PORT=$SRV_PORT
MARIADB_VERSION=$(sql "$SRC_PORT" -e 'SELECT VERSION()')
MYDUMPER_VERSION=$(mydumper --version 2>&1 | head -1)

log "generating $TABLES tables x $ROWS rows"
t0=$(date +%s.%N)
gen_pids=()
sql "$SRC_PORT" -e "CREATE DATABASE $DB"
for ((i = 1; i <= TABLES; i++)); do
  create_table "$SRC_PORT" "$DB" "sbtest$i" "$ROWS" &
  gen_pids+=($!)
  if ((${#gen_pids[@]} >= THREADS)); then
    wait "${gen_pids[0]}" || die "data generation failed"
    gen_pids=("${gen_pids[@]:1}")
  fi
done
for p in "${gen_pids[@]}"; do wait "$p" || die "data generation failed"; done
GEN_SECONDS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
sql "$SRC_PORT" -e "ANALYZE TABLE $(for ((i = 1; i <= TABLES; i++)); do printf '%s.sbtest%d,' $DB $i; done | sed 's/,$//')" >/dev/null
SRC_DATA_BYTES=$(sql "$SRC_PORT" -e "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema='$DB'")
log "generated in ${GEN_SECONDS}s; InnoDB data+index $((SRC_DATA_BYTES / 1048576)) MiB"
checksums "$SRC_PORT" "$DB" >"$WORK/res/checksum-source.txt"
# Settle: let InnoDB write back the dirty pages of the generation before timing.
sql "$SRC_PORT" -e "SET GLOBAL innodb_max_dirty_pages_pct=0" >/dev/null
for ((i = 0; i < 600; i++)); do
  dirty=$(sql "$SRC_PORT" -e "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | awk '{print $2}')
  ((dirty < 100)) && break
  sleep 0.5
done
sql "$SRC_PORT" -e "SET GLOBAL innodb_max_dirty_pages_pct=90" >/dev/null
sync

# ------------------------------------------------------------- dumps
D=$WORK/dumps
mkdir -p "$D"
URL_SRC=mysql://root@127.0.0.1:$SRC_PORT

log "dump: lockstep-agent"
timed dump_lockstep "$SRC_PID" "$AGENT" dump --mysql "$URL_SRC" --out "$D/lockstep" \
  --threads "$THREADS" --json --quiet
SIZE[lockstep]=$(bytes_of "$D/lockstep")
DUMP_HELD_US=$(jq -r '.lock.held_us' "$WORK/res/out-dump_lockstep")
DUMP_METHOD=$(jq -r '.lock.method' "$WORK/res/out-dump_lockstep")

log "dump: lockstep-agent --zstd-level $ALT_ZSTD_LEVEL (for reference)"
timed dump_lockstep_z1 "$SRC_PID" "$AGENT" dump --mysql "$URL_SRC" --out "$D/lockstep-z1" \
  --threads "$THREADS" --zstd-level "$ALT_ZSTD_LEVEL" --json --quiet
SIZE[lockstep_z1]=$(bytes_of "$D/lockstep-z1")
rm -rf "$D/lockstep-z1"

log "dump: mydumper (gzip, --rows 250000 like lockstep's chunk size)"
timed dump_mydumper "$SRC_PID" mydumper -h 127.0.0.1 -P "$SRC_PORT" -u root -B "$DB" \
  -o "$D/mydumper" -t "$THREADS" --rows 250000 -c -v 2
SIZE[mydumper]=$(bytes_of "$D/mydumper")

log "dump: mydumper (no compression, for reference)"
timed dump_mydumper_plain "$SRC_PID" mydumper -h 127.0.0.1 -P "$SRC_PORT" -u root -B "$DB" \
  -o "$D/mydumper-plain" -t "$THREADS" --rows 250000 -v 2
SIZE[mydumper_plain]=$(bytes_of "$D/mydumper-plain")
rm -rf "$D/mydumper-plain"

log "dump: mariadb-dump --single-transaction"
timed dump_mariadb_dump "$SRC_PID" mariadb-dump -h127.0.0.1 -P"$SRC_PORT" -uroot \
  --single-transaction --master-data=2 --databases "$DB" --result-file="$D/dump.sql"
SIZE[mariadb_dump]=$(bytes_of "$D/dump.sql")

log "dump: mariadb-backup --backup"
timed dump_mariabackup "$SRC_PID" mariadb-backup --backup --target-dir="$D/mariabackup" \
  --host=127.0.0.1 --port="$SRC_PORT" --protocol=tcp --user=root --parallel="$THREADS"
SIZE[mariabackup]=$(bytes_of "$D/mariabackup")
timed prepare_mariabackup "$SRC_PID" mariadb-backup --prepare --target-dir="$D/mariabackup"

# ----------------------------------------------------------- restores
log "restore: lockstep-agent load"
new_server r_lockstep
timed load_lockstep "$SRV_PID" "$AGENT" load --mysql "mysql://root@127.0.0.1:$SRV_PORT" \
  --from "$D/lockstep" --threads "$THREADS" --json --quiet
verify_restore "$SRV_PORT" lockstep
stop_server "$SRV_PID"; rm -rf "$WORK/r_lockstep"

log "restore: myloader"
new_server r_myloader
timed load_myloader "$SRV_PID" myloader -h 127.0.0.1 -P "$SRV_PORT" -u root \
  -d "$D/mydumper" -t "$THREADS" -v 2
verify_restore "$SRV_PORT" myloader
stop_server "$SRV_PID"; rm -rf "$WORK/r_myloader"

log "restore: mariadb < dump.sql"
new_server r_mysql
timed load_mariadb_dump "$SRV_PID" bash -c \
  'exec mariadb -h127.0.0.1 -P"$1" -uroot --init-command="SET SESSION sql_log_bin=0" <"$2"' \
  _ "$SRV_PORT" "$D/dump.sql"
verify_restore "$SRV_PORT" mariadb_dump
stop_server "$SRV_PID"; rm -rf "$WORK/r_mysql"

log "restore: mariadb-backup --copy-back + server start"
t0=$(date +%s.%N)
timed copyback_mariabackup "$SRC_PID" mariadb-backup --copy-back --target-dir="$D/mariabackup" \
  --datadir="$WORK/r_backup" --parallel="$THREADS"
start_server "$WORK/r_backup"
MB_START=$(awk -v a="$t0" -v b="$(date +%s.%N)" -v c="${WALL[copyback_mariabackup]}" 'BEGIN{printf "%.2f", b - a - c}')
WALL[load_mariabackup]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
RSS[load_mariabackup]=${RSS[copyback_mariabackup]}
CPU[load_mariabackup]=${CPU[copyback_mariabackup]}
SCPU[load_mariabackup]="-"
verify_restore "$SRV_PORT" mariabackup
stop_server "$SRV_PID"; rm -rf "$WORK/r_backup"
rm -rf "$D/mariabackup" "$D/dump.sql" "$D/mydumper"

# ------------------------------------------------------- lock hold time
log "lock hold: starting lockstep-agent serve"
AGENT_PORT=$(free_port)
cat >"$WORK/agent.toml" <<EOF
listen = "127.0.0.1:$AGENT_PORT"
name = "src"
mysql = "$URL_SRC"
sink_dir = "$WORK/sink"
snapshot_connections = $THREADS
lock_method = "$LOCK_METHOD"
# The CLI's cut commits without transferring; the committed snapshots keep the
# agent busy until they expire, so let them expire quickly between cuts.
snapshot_ttl = "500ms"
EOF
"$AGENT" serve --config "$WORK/agent.toml" --log warn >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
OTHER_PIDS+=("$AGENT_PID")
for ((i = 0; i < 200; i++)); do
  "$AGENT" status --agent "http://127.0.0.1:$AGENT_PORT" --json >/dev/null 2>&1 && break
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent.log" >&2; die "agent exited"; }
  sleep 0.05
done

wait_idle() {
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $("$AGENT" status --agent "http://127.0.0.1:$AGENT_PORT" --json | jq -r .state) == idle ]] && return 0
    sleep 0.05
  done
  die "agent did not return to idle"
}

declare -A CUT_FAILS
run_cuts() { # run_cuts LABEL: CUTS cuts, one JSON line per step in res/cuts-LABEL
  local label=$1 i rc out
  out=$WORK/res/cuts-$label
  : >"$out"
  : >"$out.windows"
  CUT_FAILS[$label]=0
  for ((i = 0; i < CUTS; i++)); do
    wait_idle
    rc=0
    date +%s%6N >>"$out.windows"
    "$AGENT" cut --agent "http://127.0.0.1:$AGENT_PORT" --json >>"$out" 2>"$WORK/res/cut-err" || rc=$?
    if ((rc != 0)); then
      # 75 = a refusal worth retrying (lock not granted in time, long statement).
      log "cut $i ($label) failed with exit $rc: $(tail -1 "$WORK/res/cut-err")"
      ((rc == 75)) || die "cut failed"
      CUT_FAILS[$label]=$((CUT_FAILS[$label] + 1))
    fi
    date +%s%6N >>"$out.windows"
  done
}

stats() { # stats FILE STEP FIELD: "median max" in ms
  jq -r "select(.step == \"$2\") | .$3" "$1" | sort -n | awk '
    { v[NR] = $1 }
    END { if (NR == 0) { print "- -"; exit }
          m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%.2f %.2f\n", m / 1000, v[NR] / 1000 }'
}

log "lock hold: $WRITERS writers, $CUTS cuts"
sql "$SRC_PORT" -e "CREATE DATABASE benchw; USE benchw; CREATE TABLE benchw.w (id INT AUTO_INCREMENT PRIMARY KEY,
  k INT NOT NULL, c CHAR(120) NOT NULL) ENGINE=InnoDB;
  INSERT INTO benchw.w (k, c) SELECT seq, REPEAT('x', 100) FROM seq_1_to_10000;
  CREATE TABLE benchw.probe (id INT AUTO_INCREMENT PRIMARY KEY, t DATETIME(6) NOT NULL) ENGINE=InnoDB;"
WRITER_PIDS=()
# The probe: one more client committing one-row inserts back to back, each
# stamped with its start time. A gap between two stamps is how long the first
# insert took, so the largest gap overlapping a cut bounds that cut's stall.
awk -v n="$WRITE_STATEMENTS" 'BEGIN { for (i = 0; i < n; i++) print "INSERT INTO benchw.probe (t) VALUES (NOW(6));" }' >"$WORK/probe.sql"
timeout "$WRITE_SECONDS" mariadb -h127.0.0.1 -P"$SRC_PORT" -uroot --force \
  <"$WORK/probe.sql" >/dev/null 2>&1 &
WRITER_PIDS+=($!)
OTHER_PIDS+=($!)
for ((w = 1; w <= WRITERS; w++)); do
  awk -v n="$WRITE_STATEMENTS" -v seed="$w" 'BEGIN { srand(seed);
    for (i = 0; i < n; i += 2) {
      printf "INSERT INTO benchw.w (k, c) VALUES (%d, REPEAT(\"w\", 100));\n", int(rand() * 1e6)
      printf "UPDATE benchw.w SET k = k + 1 WHERE id = %d;\n", 1 + int(rand() * 10000)
    } }' >"$WORK/writer$w.sql"
  timeout "$WRITE_SECONDS" mariadb -h127.0.0.1 -P"$SRC_PORT" -uroot --force \
    <"$WORK/writer$w.sql" >/dev/null 2>&1 &
  WRITER_PIDS+=($!)
  OTHER_PIDS+=($!)
done
sleep 2
writes() { sql "$SRC_PORT" -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_insert', 'Com_update')" | awk '{s += $2} END {print s}'; }
w_before=$(writes)
t0=$(date +%s.%N)
run_cuts load
t1=$(date +%s.%N)
w_after=$(writes)
for p in "${WRITER_PIDS[@]}"; do
  kill -0 "$p" 2>/dev/null || die "writer $p stopped before the cuts were done (raise WRITE_SECONDS/WRITE_STATEMENTS)"
done
WRITE_RATE=$(awk -v a="$w_before" -v b="$w_after" -v s="$t0" -v e="$t1" 'BEGIN{printf "%.0f", (b - a) / (e - s)}')
for p in "${WRITER_PIDS[@]}"; do stop_pid "$p"; done
log "writers stopped; ~$WRITE_RATE statements/s during the cuts"
sql "$SRC_PORT" -e "SELECT UNIX_TIMESTAMP(t) FROM benchw.probe ORDER BY id" >"$WORK/res/probe.txt"
# Per cut: the largest probe gap overlapping the cut's window (cut command
# start to end). Outside: the largest gap and the 99.9th percentile elsewhere.
read -r STALL_MED STALL_MAX OUT_MAX OUT_P999 PROBE_RATE STALL_LIST < <(awk '
  NR == FNR { w[++nw] = $1; next }
  { t = $1 * 1e6; if (n++) { gap = t - prev; hit = 0
      for (i = 1; i < nw; i += 2) if (prev < w[i + 1] && t > w[i]) {
        hit = 1; k = (i + 1) / 2; if (gap > st[k]) st[k] = gap }
      if (!hit) out[++no] = gap }
    else first = t
    prev = t }
  END {
    nc = int(nw / 2); for (k = 1; k <= nc; k++) { v[k] = st[k] + 0; list = list sprintf(" %.1f", v[k] / 1000) }
    asort(v); m = (nc % 2) ? v[(nc + 1) / 2] : (v[nc / 2] + v[nc / 2 + 1]) / 2
    asort(out); p = out[int(no * 0.999) > 0 ? int(no * 0.999) : 1]
    printf "%.2f %.2f %.2f %.2f %.0f%s\n", m / 1000, v[nc] / 1000, out[no] / 1000, p / 1000,
      (n - 1) / ((prev - first) / 1e6), list }' "$WORK/res/cuts-load.windows" "$WORK/res/probe.txt")
log "probe: stall per cut median $STALL_MED ms, max $STALL_MAX ms; outside cuts max $OUT_MAX ms, p99.9 $OUT_P999 ms"
sleep 1
run_cuts idle
read -r HELD_LOAD_MED HELD_LOAD_MAX < <(stats "$WORK/res/cuts-load" committed held_us)
read -r WAIT_LOAD_MED WAIT_LOAD_MAX < <(stats "$WORK/res/cuts-load" prepared lock_wait_us)
read -r HELD_IDLE_MED HELD_IDLE_MAX < <(stats "$WORK/res/cuts-idle" committed held_us)
read -r WAIT_IDLE_MED WAIT_IDLE_MAX < <(stats "$WORK/res/cuts-idle" prepared lock_wait_us)
read -r CAP_LOAD_MED CAP_LOAD_MAX < <(stats "$WORK/res/cuts-load" prepared capture_us)
read -r CAP_IDLE_MED CAP_IDLE_MAX < <(stats "$WORK/res/cuts-idle" prepared capture_us)
held_list() { jq -r 'select(.step == "committed") | .held_us / 1000 | . * 10 | round / 10' "$1" | paste -sd' '; }
HELD_LIST_IDLE=$(held_list "$WORK/res/cuts-idle")
HELD_LIST_LOAD=$(held_list "$WORK/res/cuts-load")
wait_list() { jq -r 'select(.step == "prepared") | .lock_wait_us / 1000 | . * 10 | round / 10' "$1" | paste -sd' '; }
WAIT_LIST_IDLE=$(wait_list "$WORK/res/cuts-idle")
WAIT_LIST_LOAD=$(wait_list "$WORK/res/cuts-load")
CUT_METHOD=$(jq -r 'select(.step == "prepared") | .lock_method' "$WORK/res/cuts-idle" | sort -u | paste -sd,)
stop_pid "$AGENT_PID"
log "lock held (load): median $HELD_LOAD_MED ms, max $HELD_LOAD_MAX ms; (idle): median $HELD_IDLE_MED ms, max $HELD_IDLE_MAX ms"

# ------------------------------------------------------ big single table
if [[ $BIG == 1 ]]; then
  log "big table: $BIG_ROWS rows in one table (separate server)"
  stop_server "$SRC_PID"; rm -rf "$WORK/src"
  new_server big
  BIG_PID=$SRV_PID BIG_PORT=$SRV_PORT
  create_table "$BIG_PORT" "$DB" sbbig "$BIG_ROWS"
  checksums "$BIG_PORT" "$DB" >"$WORK/res/checksum-source.txt"
  timed dump_lockstep_big "$BIG_PID" "$AGENT" dump --mysql "mysql://root@127.0.0.1:$BIG_PORT" \
    --out "$D/big" --threads "$THREADS" --json --quiet
  SIZE[lockstep_big]=$(bytes_of "$D/big")
  stop_server "$BIG_PID"; rm -rf "$WORK/big"
  new_server r_big
  timed load_lockstep_big "$SRV_PID" "$AGENT" load --mysql "mysql://root@127.0.0.1:$SRV_PORT" \
    --from "$D/big" --threads "$THREADS" --json --quiet
  verify_restore "$SRV_PORT" lockstep_big
  stop_server "$SRV_PID"; rm -rf "$WORK/r_big" "$D/big"
fi

# ------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mib() { awk -v b="$1" 'BEGIN{printf "%.0f", b / 1048576}'; }
kib_mib() { [[ $1 == - ]] && echo - || awk -v k="$1" 'BEGIN{printf "%.0f", k / 1024}'; }
yes_no() { awk -v a="$1" -v b="$2" 'BEGIN{ print (a <= b) ? "met" : "**missed**" }'; }

NPROC=$(nproc)
RAM=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
CMD="bash bench/bench.sh"
ENVS=()
[[ $SMALL == 1 ]] && ENVS+=(SMALL=1)
ENVS+=(TABLES=$TABLES ROWS=$ROWS THREADS=$THREADS CUTS=$CUTS WRITERS=$WRITERS)
[[ $BIG == 1 ]] && ENVS+=(BIG=1 BIG_ROWS=$BIG_ROWS)
[[ $LOCK_METHOD != auto ]] && ENVS+=(LOCK_METHOD=$LOCK_METHOD)
[[ $SYNC_BINLOG != 0 ]] && ENVS+=(SYNC_BINLOG=$SYNC_BINLOG)
CMD="${ENVS[*]} $CMD"
TOTAL_ROWS=$((TABLES * ROWS))

row() { # row TOOL WALL_LABEL SIZE_KEY RSS_LABEL  -> markdown cells
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "${WALL[$2]}" "$3" "$(kib_mib "${RSS[$2]}")" "${CPU[$2]}" "${SCPU[$2]}"
}

{
  echo "<!-- bench:begin (written by bench/bench.sh; edit outside these markers) -->"
  echo "## Results ($(date -u +%Y-%m-%d), $TOTAL_ROWS rows)"
  echo
  echo "Reproduce: \`$CMD\`"
  echo
  echo "- Machine: $NPROC cores ($CPU_MODEL), $RAM RAM, $(uname -sr); load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); whole run $(( $(date +%s) - RUN_START )) s"
  echo "- MariaDB $MARIADB_VERSION; $MYDUMPER_VERSION; $("$AGENT" --version) at commit $GIT_REV"
  echo "- Data: $TABLES sysbench-like tables x $ROWS rows (\`id INT PK, k INT, c CHAR(120), pad CHAR(60), KEY k_1(k)\`, utf8mb4, random digits), InnoDB data+index $(mib "$SRC_DATA_BYTES") MiB; generated in ${GEN_SECONDS}s"
  echo "- Servers: \`${SERVER_OPTS[*]}\`; every restore goes into a fresh server with the same settings, and is checked with \`CHECKSUM TABLE\` against the source"
  echo "- Threads: $THREADS for every parallel tool (lockstep \`--threads\`, mydumper/myloader \`-t\`, mariadb-backup \`--parallel\`); mariadb-dump and the \`mariadb\` client are single-threaded"
  echo
  echo "### Dump"
  echo
  echo "| tool | wall s | output MiB | peak RSS MiB | tool CPU s | server CPU s |"
  echo "|---|---:|---:|---:|---:|---:|"
  row "lockstep-agent dump (default: zstd level $DEFAULT_ZSTD_LEVEL)" dump_lockstep "$(mib "${SIZE[lockstep]}")"
  row "lockstep-agent dump --zstd-level $ALT_ZSTD_LEVEL" dump_lockstep_z1 "$(mib "${SIZE[lockstep_z1]}")"
  row "mydumper -c (gzip) --rows 250000" dump_mydumper "$(mib "${SIZE[mydumper]}")"
  row "mydumper uncompressed --rows 250000" dump_mydumper_plain "$(mib "${SIZE[mydumper_plain]}")"
  row "mariadb-dump --single-transaction" dump_mariadb_dump "$(mib "${SIZE[mariadb_dump]}")"
  row "mariadb-backup --backup" dump_mariabackup "$(mib "${SIZE[mariabackup]}")"
  row "mariadb-backup --prepare" prepare_mariabackup "-"
  echo
  echo "lockstep/mydumper (gzip) dump time: **$(ratio "${WALL[dump_lockstep]}" "${WALL[dump_mydumper]}")**;"
  echo "lockstep/mydumper (uncompressed): $(ratio "${WALL[dump_lockstep]}" "${WALL[dump_mydumper_plain]}");"
  echo "lockstep --zstd-level $ALT_ZSTD_LEVEL/mydumper (gzip): $(ratio "${WALL[dump_lockstep_z1]}" "${WALL[dump_mydumper]}"), /mydumper (uncompressed): $(ratio "${WALL[dump_lockstep_z1]}" "${WALL[dump_mydumper_plain]}");"
  echo "lockstep/mariadb-dump: $(ratio "${WALL[dump_lockstep]}" "${WALL[dump_mariadb_dump]}");"
  echo "lockstep/mariadb-backup (backup+prepare): $(ratio "${WALL[dump_lockstep]}" "$(awk -v a="${WALL[dump_mariabackup]}" -v b="${WALL[prepare_mariabackup]}" 'BEGIN{print a + b}')")."
  echo "lockstep dump held the lock ($DUMP_METHOD) for $(awk -v u="$DUMP_HELD_US" 'BEGIN{printf "%.2f", u / 1000}') ms."
  echo
  echo "### Restore (into a fresh, empty server)"
  echo
  echo "| tool | wall s | peak RSS MiB | tool CPU s | server CPU s |"
  echo "|---|---:|---:|---:|---:|"
  for l in "lockstep-agent load:load_lockstep" "myloader:load_myloader" "mariadb < dump.sql (sql_log_bin=0):load_mariadb_dump" "mariadb-backup --copy-back + server start:load_mariabackup"; do
    printf '| %s | %s | %s | %s | %s |\n' "${l%%:*}" "${WALL[${l#*:}]}" "$(kib_mib "${RSS[${l#*:}]}")" "${CPU[${l#*:}]}" "${SCPU[${l#*:}]}"
  done
  echo
  echo "lockstep/myloader restore time: **$(ratio "${WALL[load_lockstep]}" "${WALL[load_myloader]}")**;"
  echo "lockstep/mariadb: $(ratio "${WALL[load_lockstep]}" "${WALL[load_mariadb_dump]}");"
  echo "lockstep/mariadb-backup: $(ratio "${WALL[load_lockstep]}" "${WALL[load_mariabackup]}") (copy-back ${WALL[copyback_mariabackup]} s + start $MB_START s)."
  echo
  echo "### Lock hold time (\`lockstep-agent serve\` + $CUTS x \`lockstep-agent cut\`, method $CUT_METHOD)"
  echo
  echo "| server | held median ms | held max ms | capture median ms | capture max ms | lock wait median ms | lock wait max ms |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  echo "| idle | $HELD_IDLE_MED | $HELD_IDLE_MAX | $CAP_IDLE_MED | $CAP_IDLE_MAX | $WAIT_IDLE_MED | $WAIT_IDLE_MAX |"
  echo "| $WRITERS writers + probe (~$WRITE_RATE writes/s) | $HELD_LOAD_MED | $HELD_LOAD_MAX | $CAP_LOAD_MED | $CAP_LOAD_MAX | $WAIT_LOAD_MED | $WAIT_LOAD_MAX |"
  echo
  echo "\`held\` is the agent's \`held_us\`: from the moment the lock was granted until it was released, including the round trip to the \`cut\` client between PREPARED and COMMIT (this is when InnoDB commits are blocked). \`capture\` is the part of it spent inside the agent before PREPARED (consistent snapshots + binlog position). \`lock wait\` is how long the lock statements took to be granted (for backup-stage: BACKUP STAGE START + BLOCK_COMMIT, which also passes FLUSH and BLOCK_DDL)."
  echo
  echo "Writer stall under load, seen by a probe client committing one-row inserts back to back ($PROBE_RATE commits/s): per cut, the longest probe insert overlapping the cut: median **$STALL_MED ms**, max **$STALL_MAX ms**. Outside the cuts the longest insert took $OUT_MAX ms (99.9th percentile $OUT_P999 ms), so a per-cut stall near those values is noise, not the lock."
  echo
  echo "Probe stall per cut, ms (load):$STALL_LIST"
  echo
  echo "Held per cut, ms (idle): $HELD_LIST_IDLE"
  echo
  echo "Held per cut, ms (load): $HELD_LIST_LOAD"
  echo
  echo "Lock wait per cut, ms (idle): $WAIT_LIST_IDLE"
  echo
  echo "Lock wait per cut, ms (load): $WAIT_LIST_LOAD"
  echo
  echo "Cuts refused (exit 75): idle ${CUT_FAILS[idle]}/$CUTS, under load ${CUT_FAILS[load]}/$CUTS."
  echo
  if [[ $BIG == 1 ]]; then
    echo "### One big table ($BIG_ROWS rows), lockstep only"
    echo
    echo "| step | wall s | output MiB | peak RSS MiB | tool CPU s | server CPU s |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "lockstep-agent dump" dump_lockstep_big "$(mib "${SIZE[lockstep_big]}")"
    row "lockstep-agent load" load_lockstep_big "-"
    echo
  fi
  echo "### Targets"
  echo
  echo "| target | measured | |"
  echo "|---|---|---|"
  echo "| dump at least as fast as mydumper -c (gzip), same threads | ${WALL[dump_lockstep]} s vs ${WALL[dump_mydumper]} s | $(yes_no "${WALL[dump_lockstep]}" "${WALL[dump_mydumper]}") |"
  echo "| dump at least as fast as mydumper uncompressed, same threads | ${WALL[dump_lockstep]} s (level $ALT_ZSTD_LEVEL: ${WALL[dump_lockstep_z1]} s) vs ${WALL[dump_mydumper_plain]} s | $(yes_no "${WALL[dump_lockstep]}" "${WALL[dump_mydumper_plain]}") |"
  echo "| restore at least as fast as myloader | ${WALL[load_lockstep]} s vs ${WALL[load_myloader]} s | $(yes_no "${WALL[load_lockstep]}" "${WALL[load_myloader]}") |"
  echo "| lock held < 10 ms median, idle | $HELD_IDLE_MED ms | $(yes_no "$HELD_IDLE_MED" 10) |"
  echo "| (same, as writers see it: probe stall per cut under load, median) | $STALL_MED ms | $(yes_no "$STALL_MED" 10) |"
  max_rss=$(printf '%s\n' "${RSS[dump_lockstep]}" "${RSS[load_lockstep]}" "${RSS[dump_lockstep_big]:-0}" "${RSS[load_lockstep_big]:-0}" | sort -n | tail -1)
  echo "| agent RSS < 200 MB | max $(kib_mib "$max_rss") MiB | $(yes_no "$(kib_mib "$max_rss")" 190) |"
  echo "<!-- bench:end -->"
} >"$WORK/res/results.md"

cat "$WORK/res/results.md"

if [[ $UPDATE_MD == 1 ]]; then
  cp "$WORK/res/results.md" "$REPO/bench/last-run.md"
  if [[ -f $OUT_MD ]] && grep -q '<!-- bench:begin' "$OUT_MD"; then
    awk -v f="$WORK/res/results.md" '
      /<!-- bench:begin/ { while ((getline l < f) > 0) print l; skip = 1; next }
      /<!-- bench:end -->/ { skip = 0; next }
      !skip { print }' "$OUT_MD" >"$OUT_MD.tmp" && mv "$OUT_MD.tmp" "$OUT_MD"
  else
    { echo "# Benchmarks"; echo; cat "$WORK/res/results.md"; } >"$OUT_MD"
  fi
  log "results written to $OUT_MD and bench/last-run.md"
fi
log "done"
