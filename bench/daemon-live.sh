#!/bin/sh
# Live daemon benchmarks (issue: daemon runtime). Prints one line per round
# and the medians; record them in bench/RESULTS.md with machine and commit.
#
#   bench/daemon-live.sh [REBUFF_BIN] [AUTH_LOG]
#
# 1. live:  `rebuff start` with one stream that cats the 1 M-line auth log of
#           ../shared/bench/gen_authlog.py through the sshd filter of
#           ../shared/bench/sshd.yml, echo actions; wall time from start to
#           exit (the daemon exits when its only stream ends) and peak RSS.
#    live-noaction: the same without actions (the daemon's own cost).
#    live-metrics, live-noaction-metrics: the same two with every metrics
#           family on (exporter families with pattern labels, the per-address
#           rebuff_pattern_matches_total, internals) and a scraper asking for
#           gzip'ed OpenMetrics every 200 ms during the run.
# 2. heavy: reaction v2's announced shape: 4 streams x 1 M lines as fast as
#           possible, ~6,000 actions that each run `sleep 0.1`.
#
# The daemon's log goes to a file, as it would to journald or a log file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/rebuff}
log=${2:-/tmp/kit-bench/auth-1000000.log}
rounds=${ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -x "$bin" ] || { echo "no rebuff binary at $bin (cargo build --release)" >&2; exit 1; }
[ -f "$log" ] || { echo "no log at $log (bash ../shared/bench/setup.sh)" >&2; exit 1; }
lines=$(wc -l < "$log")

cat > "$work/live.yml" <<YAML
state_directory: $work/state
patterns:
  ip:
    type: ip
    ignorecidr: ['127.0.0.0/8', '::1/128']
streams:
  sshd:
    cmd: ['cat', '$log']
    filters:
      failedlogin:
        regex:
          - 'sshd\[\d+\]: Failed password for .* from <ip> port \d+'
          - 'sshd\[\d+\]: Invalid user .* from <ip> port \d+'
          - 'sshd\[\d+\]: Connection closed by authenticating user .* <ip> port \d+'
          - 'sshd\[\d+\]: Disconnected from authenticating user .* <ip> port \d+'
        retry: 5
        retryperiod: 10m
        actions:
          ban:
            cmd: ['echo', 'ban', '<ip>']
          unban:
            cmd: ['echo', 'unban', '<ip>']
            after: 1h
YAML

# The same without actions: what the daemon itself costs, with no action
# processes competing for the CPUs.
sed '/^        actions:/,$d' "$work/live.yml" > "$work/live-noaction.yml"

# Every family on, per-address labels included.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics_section="metrics:
  listen: 127.0.0.1:$port
  max_series: 200000
  export:
    pattern_matches: true
    internals: true"
{ cat "$work/live.yml"; echo "$metrics_section"; } > "$work/live-metrics.yml"
{ cat "$work/live-noaction.yml"; echo "$metrics_section"; } > "$work/live-noaction-metrics.yml"

# Heavy: 4 logs of 1 M lines "found <n>", 1,500 distinct values each: the
# first sighting of a value triggers, later ones are duplicates (extend).
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
for s in range(4):
    with open(f"{work}/heavy{s}.log", "w") as f:
        f.writelines(f"stream {s} found {(i * 7919) % 1500}\n" for i in range(1_000_000))
PY
{
  echo "state_directory: $work/state"
  echo "concurrency: 64"
  echo "patterns:"
  echo "  num:"
  echo "    regex: '[0-9]+'"
  echo "streams:"
  for s in 0 1 2 3; do
    cat <<YAML
  s$s:
    cmd: ['cat', '$work/heavy$s.log']
    filters:
      found:
        regex: ['found <num>\$']
        actions:
          damn:
            cmd: ['sleep', '0.1']
          undamn:
            cmd: ['sleep', '0.1']
            after: 1h
YAML
  done
} > "$work/heavy.yml"

run() { # name config lines
  rm -rf "$work/state"
  case $1 in
    *metrics)
      ( while :; do
          curl -s -o /dev/null --compressed \
            -H 'Accept: application/openmetrics-text;version=1.0.0' \
            "http://127.0.0.1:$port/metrics" || true
          sleep 0.2
        done ) &
      scraper=$!
      ;;
    *) scraper= ;;
  esac
  /usr/bin/time -f '%e %M' -o "$work/time" \
    "$bin" start -c "$2" -s "$work/sock" > "$work/out.log" 2>&1
  [ -z "$scraper" ] || kill "$scraper"
  read -r secs kib < "$work/time"
  runs=$(grep -c ': run \[' "$work/out.log" || true)
  # The daemon logs how long reading and deciding every line took.
  ms=$(grep -o 'elapsed_ms=[0-9]*' "$work/out.log" | cut -d= -f2)
  python3 -c "import sys; s,k,l,r,ms=float(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),sys.argv[4],float(sys.argv[5]); print(f'$1 {s:.2f} s {l/s/1e6:.2f} M-lines/s-end-to-end {ms/1000:.2f} s {l/ms/1e3:.2f} M-lines/s-decided peak {k/1024:.1f} MiB actions {r}')" \
    "$secs" "$kib" "$3" "$runs" "$ms" | tee -a "$work/results"
}

for round in $(seq "$rounds"); do
  run live "$work/live.yml" "$lines"
  run live-noaction "$work/live-noaction.yml" "$lines"
  run live-metrics "$work/live-metrics.yml" "$lines"
  run live-noaction-metrics "$work/live-noaction-metrics.yml" "$lines"
  run heavy "$work/heavy.yml" 4000000
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append((float(f[1]), float(f[3]), float(f[5]), float(f[7]), float(f[10])))
for name, r in rows.items():
    med = lambda i: statistics.median(x[i] for x in r)
    print(f"median {name}: end to end {med(0):.2f} s = {med(1):.2f} M lines/s; "
          f"all lines decided in {med(2):.2f} s = {med(3):.2f} M lines/s; "
          f"peak RSS {med(4):.1f} MiB ({len(r)} rounds)")
PY
