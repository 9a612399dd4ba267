#!/usr/bin/env bash
# geoip.sh REBUFF_BIN   -- what GeoIP costs: lookups, replay, and a scrape of
#                          rebuff_tcp_connections with many connections
#
# 1. `cargo bench --bench geoip -- db` writes a country database of
#    GeoLite2-Country's size (300,000 IPv4 and 100,000 IPv6 networks, 250
#    countries) under $WORK, then `-- lookup` times lookups in it.
# 2. replay of the 1 M-line sshd log ($LOG, default the kit's
#    /tmp/kit-bench/auth-1000000.log; generated with
#    `bash ../shared/bench/setup.sh --logs-only` when missing) with
#    ../shared/bench/sshd.yml as it is ("none"), plus a `geoip` section
#    ("geoip": countries in trigger records, <country> in the actions), plus
#    `ignorecountry` on the ip pattern ("ignorecountry": a lookup per match).
#    Run alternately for $ROUNDS rounds, `--format json`; medians, ratios
#    to "none", and the matches and triggers each one reports.
# 3. With SCRAPE=1 (root, iproute2): `-- scrape REBUFF_BIN $CONNECTIONS`
#    (50,000 by default) in network namespaces.
#
# Env: ROUNDS=5  WORK=/tmp/rebuff-bench-geoip  LOG  SHARED  SCRAPE=0
#      CONNECTIONS=50000
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
REBUFF=${1:-}
ROUNDS=${ROUNDS:-5}
WORK=${WORK:-/tmp/rebuff-bench-geoip}
LOG=${LOG:-/tmp/kit-bench/auth-1000000.log}
SCRAPE=${SCRAPE:-0}
CONNECTIONS=${CONNECTIONS:-50000}

if [ -z "$REBUFF" ] || [ ! -x "$REBUFF" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo "ERROR: usage: geoip.sh REBUFF_BIN" >&2
  exit 1
fi
REBUFF=$(cd "$(dirname "$REBUFF")" && pwd)/$(basename "$REBUFF")
mkdir -p "$WORK"
if [ ! -f "$LOG" ]; then
  bash "$SHARED/bench/setup.sh" --logs-only || { echo "ERROR: no log $LOG" >&2; exit 2; }
fi
[ -f "$LOG" ] || { echo "ERROR: no log $LOG" >&2; exit 2; }

echo "== machine: $(nproc) CPUs, $(uname -r); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); $(date -u +%FT%TZ)"
cd "$ROOT" || exit 2
cargo bench -q --bench geoip -- db "$WORK/country.mmdb" || exit 1
cargo bench -q --bench geoip -- lookup "$WORK/country.mmdb" || exit 1

base="$SHARED/bench/sshd.yml"
{ printf 'geoip:\n  database: %s\n' "$WORK/country.mmdb"
  sed -e "s/'<ip>'\]/'<ip>', '<country>']/" "$base"; } > "$WORK/geoip.yml"
{ printf 'geoip:\n  database: %s\n' "$WORK/country.mmdb"
  sed -e "s/'<ip>'\]/'<ip>', '<country>']/" \
      -e 's/^    type: ip$/    type: ip\n    ignorecountry: [AQ]/' "$base"; } > "$WORK/ignorecountry.yml"

declare -A times
for round in $(seq 1 "$ROUNDS"); do
  for case in none geoip ignorecountry; do
    config=$base
    [ "$case" != none ] && config="$WORK/$case.yml"
    start=$(date +%s.%N)
    "$REBUFF" replay -c "$config" --format json "$LOG" > "$WORK/$case.json" || exit 1
    end=$(date +%s.%N)
    times[$case]+="$(echo "$end - $start" | bc) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
none=$(echo "${times[none]}" | median)
for case in none geoip ignorecountry; do
  m=$(echo "${times[$case]}" | median)
  summary=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["summary"]; print(s["matches"], s["triggers"], s.get("ignored_by_reason", {}).get("country", 0))' "$WORK/$case.json")
  printf 'replay %-14s median %6.2f s  ratio %.3f  (matches triggers country-ignored: %s; runs: %s)\n' \
    "$case" "$m" "$(echo "$m / $none" | bc -l)" "$summary" "${times[$case]}"
done

if [ "$SCRAPE" = 1 ]; then
  cargo bench -q --bench geoip -- scrape "$REBUFF" "$CONNECTIONS"
fi
