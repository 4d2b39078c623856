#!/bin/bash
# Where a job's time goes, on SQLite or on a PostgreSQL cluster running on this machine: the
# harness behind the issue 14 measurements that `bench --compare-databases` does not make.
#
# It starts a script-runner (maxConcurrent 4, the trivial `echo ok` script) on a fresh database,
# drives POST /run with wrk (sync runs, or async submissions and then the wait until the queue
# has drained) at each concurrency in $CONCS, and prints per job: the server's own CPU and,
# on PostgreSQL, the whole cluster's CPU (the postmaster with its reaped children, and every
# live child), the statements (pg_stat_statements, if loaded), and the WAL records, bytes,
# writes, fsyncs and fsync time (pg_stat_wal; the time needs track_wal_io_timing = on). It
# sleeps 11 s around each window: idle backends flush their statistics 10 s late.
#
#   bench/pg-diag.sh sqlite|postgres [seconds (5)] [sync|async] [ALTER DATABASE setting...]
#
# Environment: ADMIN (postgres: an admin URL, postgres://user:pass@host:port/db; the database
# diag_<pid> is made beside db and dropped after, unless KEEPDB=1), PGDATA (postgres: the
# cluster's data folder, for postmaster.pid), SR (the server binary; default
# ${CARGO_TARGET_DIR:-target}/release/script-runner), CONCS (default "1 4"),
# PERF=1 (perf record -g of the server and the cluster during each window, into the run
# folder), DURING (a command run beside each window, with $pids, $dir and $c set).
# Settings are given to the database, e.g. "synchronous_commit=off", "log_statement='all'".
# Needs wrk, curl, bc, psql. The run folder (printed at the end) keeps wrk's output and the
# cluster's processes' CPU before and after each window (kinds-*).
set -euo pipefail
db=$1; secs=${2:-5}; mode=${3:-sync}; shift $(( $# < 3 ? $# : 3 )) || true
SR=${SR:-${CARGO_TARGET_DIR:-target}/release/script-runner}
dir=$(mktemp -d "${TMPDIR:-/tmp}/sr-pg-diag.XXXXXX")
printf '#!/bin/sh\necho ok\n' > $dir/trivial.sh; chmod +x $dir/trivial.sh
echo '{"scripts":[{"id":"trivial","path":"./trivial.sh","mode":"sync"}]}' > $dir/scripts.json
echo '{"server":{"host":"127.0.0.1","port":0},"runner":{"maxConcurrent":4,"maxQueued":100000,"logsDir":"./logs"},"scriptsFile":"./scripts.json"}' > $dir/config.json
name=
if [ "$db" = postgres ]; then
  : "${ADMIN:?postgres needs ADMIN=postgres://user:pass@host:port/db}" "${PGDATA:?postgres needs PGDATA}"
  name=diag_$$; psql "$ADMIN" -qc "CREATE DATABASE $name"
  for s in "$@"; do psql "$ADMIN" -qc "ALTER DATABASE $name SET $s"; done
  url=${ADMIN%/*}/$name
else
  url=sqlite://$dir/db.sqlite
fi
DATABASE_URL=$url RUST_LOG=warn $SR serve --config $dir/config.json > $dir/out 2>$dir/err &
spid=$!
trap 'kill $spid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening $dir/out 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/script-runner listening on //p' $dir/out)
[ -n "$base" ] || { cat $dir/err; exit 1; }
if [ $mode = sync ]; then body='{"scriptId":"trivial"}'; else body='{"scriptId":"trivial","mode":"async"}'; fi
printf 'wrk.method = "POST"; wrk.body = %s; wrk.headers["Content-Type"] = "application/json"\n' "'$body'" > $dir/post.lua

ticks() { awk '{print $14+$15}' /proc/$1/stat; }
postmaster() { head -1 $PGDATA/postmaster.pid; }
# The whole cluster: the postmaster with its reaped children (backends that ended, autovacuum
# workers), and its live children.
pgticks() {
  local pm; pm=$(postmaster)
  { awk '{print $14+$15+$16+$17}' /proc/$pm/stat
    ps --ppid $pm -o pid= | while read p; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || true; done
  } | awk '{s+=$1} END{print s+0}'
}
# Each live process of the cluster: its CPU in ticks, pid and title (who spends it).
pgkinds() { ps --ppid $(postmaster) -o pid=,args= | while read p a; do echo "$(ticks $p 2>/dev/null || echo 0) $p $a"; done; }
q() { psql "$ADMIN" -qAtc "$1"; }
snap() {
  S_SRV=$(ticks $spid)
  if [ -n "$name" ]; then
    S_PG=$(pgticks)
    S_STM=$(q "select coalesce(sum(calls),0) from pg_stat_statements s join pg_database d on d.oid=s.dbid where d.datname='$name'" 2>/dev/null || echo 0)
    S_WAL=$(q "select wal_records||' '||wal_bytes||' '||wal_write||' '||wal_sync||' '||wal_sync_time from pg_stat_wal")
  fi
}
total() { curl -s "$base/jobs?limit=1&status=$1" | sed 's/.*"total":\([0-9]*\).*/\1/'; }

wrk -t1 -c4 -d1s -s $dir/post.lua $base/run > /dev/null   # warm-up
for c in ${CONCS:-1 4}; do
  sleep 11
  snap; b_srv=$S_SRV; b_pg=${S_PG:-0}; b_stm=${S_STM:-0}; b_wal=${S_WAL:-0 0 0 0 0}
  pids=$spid
  if [ -n "$name" ]; then
    pids=$(echo $spid $(postmaster) $(ps --ppid $(postmaster) -o pid=) | tr ' ' ',')
    pgkinds > $dir/kinds-before-c$c
  fi
  if [ -n "${PERF:-}" ]; then
    perf record -q -F 1999 -g -p $pids -o $dir/perf-c$c.data -- sleep $secs 2>/dev/null & perfpid=$!
  fi
  if [ -n "${DURING:-}" ]; then eval "$DURING" & duringpid=$!; fi
  out=$(wrk -t1 -c$c -d${secs}s --latency -s $dir/post.lua $base/run)
  if [ -n "${PERF:-}" ]; then wait $perfpid || true; fi
  if [ -n "${DURING:-}" ]; then wait $duringpid || true; fi
  echo "$out" > $dir/wrk-c$c
  n=$(echo "$out" | awk '/requests in/{print $1}')
  if [ $mode = async ]; then   # the jobs behind the 202s: their CPU counts too
    while [ "$(total queued)" != 0 ] || [ "$(total running)" != 0 ]; do sleep 0.2; done
  fi
  if [ -n "$name" ]; then pgkinds > $dir/kinds-after-c$c; fi
  sleep 11
  snap
  rate=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  us() { echo $(( $1 * 1000000 / $(getconf CLK_TCK) / n )); }
  echo "$db $mode c=$c: $n jobs, $rate jobs/s, p50 $p50, p99 $p99 | server CPU/job $(us $((S_SRV - b_srv))) us" \
    "${name:+| cluster CPU/job $(us $((S_PG - b_pg))) us | statements/job $(echo "scale=2; ($S_STM - $b_stm) / $n" | bc)}"
  if [ -n "$name" ]; then
    read -r r0 b0 w0 s0 t0 <<< "$b_wal"; read -r r1 b1 w1 s1 t1 <<< "$S_WAL"
    echo "   WAL/job: records $(echo "scale=2; ($r1 - $r0) / $n" | bc), bytes $(( (b1 - b0) / n )), writes $(echo "scale=2; ($w1 - $w0) / $n" | bc)," \
      "fsyncs $(echo "scale=2; ($s1 - $s0) / $n" | bc), fsync time $(echo "scale=1; ($t1 - $t0) * 1000 / $n" | bc) us"
  fi
done
kill $spid; wait $spid 2>/dev/null || true
if [ -n "$name" ] && [ -z "${KEEPDB:-}" ]; then psql "$ADMIN" -qc "DROP DATABASE $name WITH (FORCE)"; fi
echo "run folder $dir${name:+, database $name${KEEPDB:+ (kept)}}"
