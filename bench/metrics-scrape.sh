#!/bin/sh
# Scrape benchmark (issue: metrics): how long one scrape of 100,000
# pattern-labelled series takes, gzip'ed, on a live daemon.
#
#   bench/metrics-scrape.sh [REBUFF_BIN] [SERIES]
#
# A stream feeds SERIES lines, each from a distinct address, to a filter that
# never triggers; metrics keep every address as a series of the cumulative
# rebuff_pattern_matches_total (the exporter's reaction_match_count holds
# them too until the first scrape empties it). Timed with curl: the first
# scrape (both families, 2 x SERIES series), then ROUNDS scrapes of SERIES
# series each in Prometheus text and in OpenMetrics, all gzip'ed; medians.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/rebuff}
series=${2:-100000}
rounds=${ROUNDS:-7}
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "no rebuff binary at $bin (cargo build --release)" >&2; exit 1; }

python3 - "$work/addresses.log" "$series" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.writelines(f"fail root from 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(n))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/scrape.yml" <<YAML
state_directory: $work/state
patterns:
  ip: {type: ip}
  user: {regex: '\w+'}
streams:
  feed:
    cmd: ['tail', '-n', '+1', '-F', '$work/addresses.log']
    filters:
      failed:
        regex: ['fail <user> from <ip>\$']
        retry: 1000000
        retryperiod: 1h
        actions:
          ban: {cmd: ['true']}
metrics:
  listen: 127.0.0.1:$port
  max_series: $((series * 2))
  export:
    pattern_matches: true
YAML
"$bin" start -c "$work/scrape.yml" -s "$work/sock" > "$work/out.log" 2>&1 &
daemon=$!

scrape() { # accept-header -> prints seconds and size
  curl -s --compressed -H "Accept: $1" -o "$work/body" \
    -w '%{time_total} %{size_download}\n' "http://127.0.0.1:$port/metrics"
}
# Wait (deadline 60 s) until every line was matched: the daemon logs one
# match line each. Not by scraping, which would empty the exporter family.
deadline=$(( $(date +%s) + 60 ))
until [ "$(grep -c ': match \[' "$work/out.log" || true)" -ge "$series" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the daemon did not match $series lines" >&2; tail "$work/out.log" >&2; exit 1; }
  sleep 0.2
done
first=$(scrape 'text/plain')
held=$(grep -c '^reaction_match_count{' "$work/body" || true)
echo "first scrape (exporter family + cumulative): $first s/bytes, reaction_match_count series: $held"
for format in 'text/plain' 'application/openmetrics-text;version=1.0.0'; do
  : > "$work/times"
  for _ in $(seq "$rounds"); do scrape "$format" >> "$work/times"; done
  lines=$(grep -c '^rebuff_pattern_matches_total{' "$work/body" || true)
  python3 - "$work/times" "$format" "$lines" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
secs = statistics.median(float(r[0]) for r in rows)
size = statistics.median(int(r[1]) for r in rows)
print(f"{sys.argv[2]}: median {secs * 1000:.1f} ms, {size / 1e6:.2f} MB gzip'ed, "
      f"{sys.argv[3]} rebuff_pattern_matches_total series ({len(rows)} scrapes)")
PY
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
echo "daemon peak RSS: $((rss / 1024)) MiB"
