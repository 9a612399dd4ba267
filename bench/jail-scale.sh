#!/bin/bash
# Jail scale benchmark (issue 11, item 6): a daemon holding N jailed
# addresses. Prints one `key value` line per measurement.
#
#   N=1000000 bench/jail-scale.sh [REBUFF_BIN]
#
# The daemon has one filter that triggers on every match, an unban `after: 1d` (plus,
# with BAN=1, an immediate ban `cmd: [true]`, one process per address); its
# stream waits for a go file, then cats N distinct addresses (half IPv4, half
# IPv6) and sleeps. It measures:
# - rss_empty_kib: VmRSS of the daemon before any line;
# - rss_jailed_kib, hwm_jailed_kib: VmRSS and VmHWM once the last address
#   was matched; bytes_per_address: (rss_jailed - rss_empty) / N;
# - fill_s: from the go file to the last address's match line;
# - show_s, show_bytes: a `show -f json` of everything;
# - trigger_max_ms, trigger_median_ms, triggers: `rebuff trigger` of fresh
#   addresses, one after the other, for as long as that show runs (each
#   includes starting the client process); trigger_idle_ms: one without show;
# - rss_after_show_kib: VmRSS one second after the show;
# - restore_s: after a stop (SIGTERM), from the restart to its "state
#   restored" log line; ready_s: to the first answered trigger;
#   rss_restored_kib: VmRSS then.
# With NFT=1 (root), the ban and unban are `type: nftables` actions and the
# daemon runs in a network namespace of its own; kernel_restored_s is then
# the time from the restart until every ban is back in the kernel set (the
# writer's "set operations applied" lines add up to N).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/rebuff}
n=${N:-100000}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null
  [ -z "${ns:-}" ] || ip netns del "$ns"
  rm -rf "$work"
}
trap cleanup EXIT
[ -x "$bin" ] || { echo "no rebuff binary at $bin (cargo build --release)" >&2; exit 1; }

python3 - "$work/ips.log" "$n" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(n):
        if i % 2 == 0:
            a = i // 2
            f.write(f"fail 10.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}\n")
        else:
            f.write(f"fail 2001:db8::{i >> 16 & 0xffff:x}:{i & 0xffff:x}\n")
    f.write("fail 192.0.2.254\n")
PY
ban=
unban="          unban:
            cmd: ['true']
            after: 1d"
wrap=
level=INFO
if [ "${NFT:-0}" = 1 ]; then
  ns=rebuff-jail-$$
  ip netns add "$ns"
  wrap="ip netns exec $ns"
  level=DEBUG
  ban="          ban:
            type: nftables
            options: {set: bans, action: add}"
  unban="          unban:
            type: nftables
            options: {set: bans, action: delete}
            after: 1d"
elif [ "${BAN:-0}" = 1 ]; then
  ban="          ban:
            cmd: ['true']"
fi
cat > "$work/jail.yml" <<YAML
state_directory: $work/state
concurrency: 64
patterns:
  ip:
    type: ip
streams:
  s:
    cmd: ['sh', '-c', 'while [ ! -e $work/go ]; do sleep 0.05; done; cat $work/ips.log; exec sleep 100000']
    filters:
      f:
        regex: ['^fail <ip>\$']
        actions:
$ban
$unban
YAML
sock=$work/sock
ms() { date +%s%3N; }
field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
wait_log() { # pattern timeout_s
  local end=$(( $(date +%s) + $2 ))
  until grep -q -- "$1" "$work/log" 2>/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timeout waiting for $1" >&2; tail -5 "$work/log" >&2; exit 1; }
    sleep 0.05
  done
}
start() {
  : > "$work/log"
  $wrap "$bin" start -l "$level" -c "$work/jail.yml" -s "$sock" > "$work/log" 2>&1 &
  pid=$!
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
trig() { # address -> ms
  local t0 t1
  t0=$(ms); "$bin" trigger -s "$sock" s.f "ip=$1" > /dev/null; t1=$(ms)
  echo $(( t1 - t0 ))
}

start
until [ -S "$sock" ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
  sleep 0.05
done
sleep 1
echo "n $n"
echo "rss_empty_kib $(field VmRSS)"
empty=$(field VmRSS)
t0=$(ms)
touch "$work/go"
# The sentinel is the last line: its match line comes after every other.
until tail -c 2000 "$work/log" | grep -q 'match.*192\.0\.2\.254'; do
  kill -0 "$pid" 2>/dev/null || { tail "$work/log" >&2; exit 1; }
  sleep 0.1
done
t1=$(ms)
echo "fill_s $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
sleep 2
rss=$(field VmRSS)
echo "rss_jailed_kib $rss"
echo "hwm_jailed_kib $(field VmHWM)"
echo "bytes_per_address $(( (rss - empty) * 1024 / (n + 1) ))"
echo "trigger_idle_ms $(trig 198.51.100.1)"

# show of everything, with triggers of fresh addresses meanwhile.
t0=$(ms)
"$bin" show -s "$sock" -f json > "$work/show.json" &
show=$!
: > "$work/lat"
i=2
while kill -0 "$show" 2>/dev/null; do
  trig "198.51.$(( i / 250 % 250 )).$(( i % 250 + 1 ))" >> "$work/lat"
  i=$(( i + 1 ))
done
wait "$show"
t1=$(ms)
echo "show_s $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
echo "show_bytes $(wc -c < "$work/show.json")"
echo "triggers $(wc -l < "$work/lat")"
echo "trigger_max_ms $(sort -n "$work/lat" | tail -1)"
echo "trigger_median_ms $(sort -n "$work/lat" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
sleep 1
echo "rss_after_show_kib $(field VmRSS)"
echo "hwm_after_show_kib $(field VmHWM)"

stop
start
t0=$(ms)
wait_log 'state restored' 600
t1=$(ms)
echo "restore_s $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
until [ -S "$sock" ]; do sleep 0.05; done
trig 198.51.100.250 > /dev/null
t2=$(ms)
echo "ready_s $(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
if [ -n "$wrap" ]; then
  applied() {
    grep -o 'operations=[0-9]* failed=[0-9]*' "$work/log" \
      | awk -F'[= ]' '{ s += $2 - $4 } END { print s + 0 }'
  }
  until [ "$(applied)" -ge "$n" ]; do sleep 0.05; done
  t3=$(ms)
  echo "kernel_restored_s $(awk -v a="$t0" -v b="$t3" 'BEGIN { printf "%.2f", (b - a) / 1000 }')"
  echo "kernel_elements $($wrap nft list set inet reaction bansv4 | grep -o ',' | wc -l) v4 (commas)"
fi
sleep 1
echo "rss_restored_kib $(field VmRSS)"
echo "hwm_restored_kib $(field VmHWM)"
stop
