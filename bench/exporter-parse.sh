#!/bin/sh
# Exporter benchmark (issue: rebuff exporter): how fast `rebuff exporter`
# and the real reaction-metrics-exporter 1.0.1 read the same 1 M reaction
# log lines in file mode, their peak RSS, and how long a scrape of 100,000
# pattern-labelled series takes.
#
#   bench/exporter-parse.sh [REBUFF_BIN] [PYTHON_WITH_EXPORTER]
#
# A stand-in `reaction` (shell) answers -V, test-config and show. LINES lines
# (default 1,000,000: 60% matches over 20,000 addresses, 15% two-pattern
# matches, 15% actions, the rest stream events, stop commands and unmatched
# WARN lines) are appended at once to a log each exporter follows; the time
# runs from the append to the moment the exporter has counted the last line
# (rebuff: rebuff_exporter_lines_total; the real exporter: a sentinel
# stream event, polled every second). Peak RSS is VmHWM at the end. Then
# ROUNDS times: SERIES lines from distinct addresses, one timed scrape
# (curl, no gzip), median. Skips the real exporter when PYTHON cannot import it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/rebuff}
python=${2:-python3}
lines=${LINES:-1000000}
series=${SERIES:-100000}
rounds=${ROUNDS:-5}
work=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "no rebuff binary at $bin (cargo build --release)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

mkdir -p "$work/bin" "$work/rb" "$work/py"
cat > "$work/bin/reaction" <<'SH'
#!/bin/sh
case "$1" in
  -V) echo "reaction 2.2.0" ;;
  test-config) cat "$3" ;;
  show) if [ -e "$3" ]; then echo '{}'; else exit 1; fi ;;
esac
SH
chmod +x "$work/bin/reaction"
PATH="$work/bin:$PATH"
export PATH
cat > "$work/reaction.yml" <<'YAML'
patterns:
  ip: {regex: '[0-9a-f.:]+'}
  user: {regex: '\w+'}
streams:
  ssh:
    cmd: ['tail', '-F', '/var/log/auth.log']
    filters:
      failedlogin:
        regex: ['Failed password for .* from <ip>']
        actions: {ban: {cmd: ['echo']}}
      two:
        regex: ['user <user> from <ip>']
        actions: {notify: {cmd: ['echo']}}
YAML
: > "$work/reaction.sock"

python3 - "$work/lines.log" "$lines" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(n):
        k = i % 100
        a = (i * 7919) % 20000
        ip = f"10.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        if k < 60:
            f.write(f'INFO ssh.failedlogin: match ["{ip}"]\n')
        elif k < 75:
            f.write(f'INFO ssh.two: match ["{ip}", "user{a % 50}"]\n')
        elif k < 90:
            f.write(f'INFO ssh.failedlogin.ban: run ["echo" "ban" "{ip}"]\n')
        elif k < 93:
            f.write('ERROR stream ssh exited: its command returned exit code 1\n')
        elif k < 95:
            f.write('INFO stop command: run ["true"]\n')
        else:
            f.write(f'WARN something about {ip}\n')
PY

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
config() { # port log
    cat <<YAML
listen: {address: 127.0.0.1, port: $1}
reaction:
  config: $work/reaction.yml
  logs: {file: $2}
  socket: $work/reaction.sock
  hold: 0
YAML
}
now() { python3 -c 'import time; print(time.time())'; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
wait_http() {
    i=0
    until curl -sf "http://127.0.0.1:$1/metrics" >/dev/null; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "no endpoint on $1" >&2; exit 1; }
        sleep 0.1
    done
}
lines_read() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk '/^rebuff_exporter_lines_total / {print $2}'
}

echo "machine: $(nproc) CPUs, $(uname -r); rebuff $("$bin" -V); lines: $lines"

# rebuff
port=$(free_port)
: > "$work/rb.log"
config "$port" "$work/rb.log" > "$work/rb.yml"
(cd "$work/rb" && exec "$bin" exporter -c "$work/rb.yml" start > "$work/rb/out.log" 2>&1) &
rb=$!; pids="$pids $rb"
wait_http "$port"
until [ "$(lines_read "$port")" -ge 1 ] 2>/dev/null; do echo 'INFO warmup: start ["x"]' >> "$work/rb.log"; sleep 0.1; done
before=$(lines_read "$port")
t0=$(now)
cat "$work/lines.log" >> "$work/rb.log"
target=$((before + lines))
until [ "$(lines_read "$port")" -ge "$target" ]; do sleep 0.02; done
t1=$(now)
rb_rss=$(hwm "$rb")
rb_s=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
rb_rate=$(python3 -c "print(int($lines / ($t1 - $t0)))")
echo "rebuff exporter: ${rb_s} s, ${rb_rate} lines/s, peak RSS ${rb_rss} KiB"

# the real exporter
if "$python" -c 'import reaction_metrics_exporter' 2>/dev/null; then
    pport=$(free_port)
    : > "$work/py.log"
    config "$pport" "$work/py.log" > "$work/py.yml"
    (cd "$work/py" && exec "$python" -m reaction_metrics_exporter -c "$work/py.yml" start > "$work/py/out.log" 2>&1) &
    py=$!; pids="$pids $py"
    wait_http "$pport"
    until curl -sf "http://127.0.0.1:$pport/metrics" | grep -q 'stream="warmup"'; do
        echo 'INFO warmup: start ["x"]' >> "$work/py.log"; sleep 0.3
    done
    t0=$(now)
    { cat "$work/lines.log"; echo 'INFO sentinel: start ["x"]'; } >> "$work/py.log"
    until curl -sf "http://127.0.0.1:$pport/metrics" | grep -q 'stream="sentinel"'; do
        kill -0 "$py" 2>/dev/null || { echo "the real exporter died:" >&2; tail -5 "$work/py/out.log" >&2; exit 1; }
        sleep 1
    done
    t1=$(now)
    py_rss=$(hwm "$py")
    py_s=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    py_rate=$(python3 -c "print(int($lines / ($t1 - $t0)))")
    echo "reaction-metrics-exporter 1.0.1: ${py_s} s, ${py_rate} lines/s, peak RSS ${py_rss} KiB"
    python3 -c "print(f'throughput ratio rebuff / exporter: {$rb_rate / $py_rate:.1f}x')"
    kill "$py"
else
    echo "reaction-metrics-exporter not importable by $python: only rebuff measured"
fi

# scrape of SERIES pattern-labelled series
python3 - "$work/series.log" "$series" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.writelines(f'INFO ssh.failedlogin: match ["10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"]\n' for i in range(n))
PY
times=""
r=0
while [ $r -lt "$rounds" ]; do
    before=$(lines_read "$port")
    cat "$work/series.log" >> "$work/rb.log"
    # Wait without scraping (a scrape empties the table): the log is read
    # when the state file's offset reaches the end; simply give it time,
    # then check the series count of the timed scrape.
    sleep 2
    t=$(curl -s -o "$work/scrape.txt" -w '%{time_total}' "http://127.0.0.1:$port/metrics")
    n=$(grep -c '^reaction_match_count{' "$work/scrape.txt" || true)
    [ "$n" -eq "$series" ] || echo "round $r: $n series instead of $series" >&2
    times="$times $t"
    r=$((r + 1))
done
python3 -c "
import statistics, sys
t = [float(x) for x in sys.argv[1:]]
print(f'scrape of $series series: median {statistics.median(t) * 1000:.1f} ms (rounds: {\" \".join(f\"{x*1000:.1f}\" for x in t)}), body {__import__(\"os\").path.getsize(\"$work/scrape.txt\")} bytes')
" $times
empty=""
r=0
while [ $r -lt "$rounds" ]; do
    empty="$empty $(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/metrics")"
    r=$((r + 1))
done
python3 -c "
import statistics, sys
t = [float(x) for x in sys.argv[1:]]
print(f'scrape with no series (the reaction calls alone): median {statistics.median(t) * 1000:.1f} ms')
" $empty
echo "rebuff peak RSS after the scrapes: $(hwm "$rb") KiB"
