#!/usr/bin/env bash
# score-vs-seed.sh REBUFF_BIN [LOG]
#
# `rebuff score` against the seed score daemon (python3
# ../shared/seeds/ipset-score-daemon.runnable.py) on the same log, ruleset
# (bench/score-rules.ini, 10 rules) and flags, alternately for ROUNDS rounds
# in the same run: median wall time, lines/s, median peak RSS, the
# throughput ratio. Both read the log on stdin and run /bin/true as their
# ipset program (every flush still spawns it), at log level error.
# Before timing, one run of each with a recording ipset and a long interval
# checks that both send the same calls.
# Env: ROUNDS (3), SHARED (../shared beside the repository).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REBUFF=${1:?usage: score-vs-seed.sh REBUFF_BIN [LOG]}
LOG=${2:-/tmp/kit-bench/auth-1000000.log}
ROUNDS=${ROUNDS:-3}
SHARED=${SHARED:-$HERE/../../shared}
SEED=$SHARED/seeds/ipset-score-daemon.runnable.py
RULES=$HERE/score-rules.ini
[ -s "$LOG" ] || { echo "no log $LOG: bash $SHARED/bench/setup.sh --logs-only" >&2; exit 1; }
LINES=$(wc -l < "$LOG")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FLAGS=(--input - --ruleset "$RULES" --ipset bench --score-threshold 40 --score-min -50 --log-level error)

# Same calls: a recording ipset, one flush at the end.
cat > "$WORK/rec" <<REC
#!/bin/sh
{ printf 'ARGV'; for a in "\$@"; do printf ' %s' "\$a"; done; printf '\n'; /bin/cat; } >> "\$0.log"
REC
chmod +x "$WORK/rec"
python3 "$SEED" "${FLAGS[@]}" --ipset-exe "$WORK/rec" --update-interval 100000 < "$LOG"
mv "$WORK/rec.log" "$WORK/seed.calls"
"$REBUFF" score "${FLAGS[@]}" --ipset-exe "$WORK/rec" --update-interval 100000 < "$LOG"
mv "$WORK/rec.log" "$WORK/rebuff.calls"
if cmp -s "$WORK/seed.calls" "$WORK/rebuff.calls"; then
  echo "same ipset calls: $(grep -c -- '-exist' "$WORK/seed.calls") add/del lines"
else
  echo "DIFFERENT ipset calls" >&2; diff "$WORK/seed.calls" "$WORK/rebuff.calls" | head >&2; exit 1
fi

measure() {  # measure NAME CMD... ; appends "seconds kib" to $WORK/NAME
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" --ipset-exe /bin/true < "$LOG"
  cat "$WORK/t" >> "$WORK/$name"
}
for _ in $(seq "$ROUNDS"); do
  measure seed python3 "$SEED" "${FLAGS[@]}"
  measure rebuff "$REBUFF" score "${FLAGS[@]}"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
report() {
  local name=$1 secs kib
  secs=$(cut -d' ' -f1 "$WORK/$name" | median)
  kib=$(cut -d' ' -f2 "$WORK/$name" | median)
  printf '%-7s median %8.2f s  %10.0f lines/s  peak RSS %6.1f MiB\n' \
    "$name" "$secs" "$(echo "$LINES / $secs" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
  echo "$secs" > "$WORK/$name.median"
}
echo "$LINES lines, $ROUNDS rounds, $(nproc) CPUs, $(date -u +%FT%TZ)"
report seed
report rebuff
printf 'throughput ratio rebuff/seed: %.1fx\n' "$(echo "$(cat "$WORK/seed.median") / $(cat "$WORK/rebuff.median")" | bc -l)"
