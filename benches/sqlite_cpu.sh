#!/bin/bash
# CPU per job, W1 on SQLite in /dev/shm (issue 13): foxtive, the raw sqlite3
# loop and the rusqlite ceiling (plain, and with foxtive's claim), each drain
# of 100,000 pre-published jobs run under /usr/bin/time (user, sys, wall).
# usage: benches/sqlite_cpu.sh ROUNDS [perf]   (perf: `perf record` foxtive's drain)
# Needs the release extension in the active venv and
# `cargo build --release -p foxtive-core --example sqlite_ceiling` in $CARGO_TARGET_DIR.
set -e
cd "$(dirname "$0")"
export SQLITE_BENCH_DIR=/dev/shm
PY=${PYTHON:-python}
CEIL=${CARGO_TARGET_DIR:-../target}/release/examples/sqlite_ceiling
OUT=$(mktemp -d)
N=100000
for r in $(seq 1 $1); do
for c in foxtive "sqlite3 raw" ceiling "ceiling fox"; do
  q=sqlcpu$RANDOM
  $PY compare.py --publish foxtive --queue $q -n $N --workload w1-sqlite >/dev/null
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ "${c:0:7}" = ceiling ]; then
    MODE=plain; [ "$c" = "ceiling fox" ] && MODE=fox
    out=$( { /usr/bin/time -f "TIME %U %S %e" $CEIL drain /dev/shm/$q.db $q $N 500 $MODE; } 2>&1 )
  elif [ "$c" = foxtive ] && [ "$2" = perf ]; then
    out=$( { /usr/bin/time -f "TIME %U %S %e" perf record -F 2000 -g -o $OUT/perf-$r.data $PY compare.py --consume foxtive --workload w1-sqlite --queue $q -n $N --result $OUT/res.json --idle-timeout 5; } 2>&1 )
  else
    out=$( { /usr/bin/time -f "TIME %U %S %e" $PY compare.py --consume "$c" --workload w1-sqlite --queue $q -n $N --result $OUT/res.json --idle-timeout 5; } 2>&1 )
  fi
  t=$(echo "$out" | grep ^TIME)
  if [ "${c:0:7}" = ceiling ]; then rate=$(echo "$out" | grep '"rate"'); else rate=$(python3 -c "import json;d=json.load(open('$OUT/res.json'));print('rate', round($N/(d['last']-d['first'])), 'lost', d['lost'], 'dups', d['dups'])"); fi
  echo "round $r | $c | $t | $rate | load $load"
  rm -f /dev/shm/$q.db*
done; done
