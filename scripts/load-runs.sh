#!/usr/bin/env bash
# The whole suite RUNS times in a row (default 3), each under one CPU burner per core, as
# docs/testing.md ("Flakiness") records: a test that fails once here fails on a busy CI
# machine some day. Logs: $OUT/run-N.txt (default /tmp/awstoken-load-runs).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
out=${OUT:-/tmp/awstoken-load-runs}
mkdir -p "$out"
status=0
for i in $(seq "$runs"); do
  burners=()
  for _ in $(seq "$(nproc)"); do
    python3 -c "while True: pass" &
    burners+=($!)
  done
  start=$(date +%s)
  CI=true bash scripts/test.sh -q -p no:cacheprovider "$@" > "$out/run-$i.txt" 2>&1
  rc=$?
  kill "${burners[@]}" 2>/dev/null
  wait "${burners[@]}" 2>/dev/null
  [ "$rc" -eq 0 ] || status=1
  echo "run $i: exit $rc, $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg): $(tail -1 "$out/run-$i.txt")"
done
exit "$status"
