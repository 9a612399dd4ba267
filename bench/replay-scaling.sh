#!/usr/bin/env bash
# replay-scaling.sh REBUFF_BIN   -- how `rebuff replay` scales with filters and workloads
#
# Logs, generated once and reused (under $WORK, default /tmp/rebuff-bench):
#   auth-$LINES.log (+ .stats.json)  ../shared/bench/gen_authlog.py, its default seed
#   web-$LINES.log  (+ .stats.json)  bench/gen_weblog.py, its default seed
# Configs, run alternately (sshd, plus40, web, sshd, ...) for $ROUNDS rounds:
#   sshd    ../shared/bench/sshd.yml   on the auth log  (1 filter)
#   plus40  bench/sshd-plus40.yml      on the auth log  (the same + 40 filters that never match)
#   web     bench/web.yml              on the web log   (32 filters)
# each as `REBUFF_BIN replay -c CONFIG --format json LOG`, timed with /usr/bin/time -f '%e %M'.
# Prints median wall seconds, lines/s and median peak RSS per config, the ratio
# sshd-plus40/sshd, and checks summary.lines, summary.matches and summary.filters
# against the generators' stats (mismatches are printed).
#
# ../shared is the kit cloned beside the repository (set SHARED= otherwise).
# Exit: 0 all runs done (STRICT=1: 3 when a check fails), 1 REBUFF_BIN missing or
# failing, 2 missing tools or inputs.
# Env: ROUNDS=5  LINES=1000000  WORK=/tmp/rebuff-bench  TIMEOUT=600 (s per run)  SHARED  STRICT=0
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
REBUFF=${1:-}
ROUNDS=${ROUNDS:-5}
LINES=${LINES:-1000000}
WORK=${WORK:-/tmp/rebuff-bench}
TMO=${TIMEOUT:-600}
STRICT=${STRICT:-0}

if [ -z "$REBUFF" ] || [ "$REBUFF" = "-h" ] || [ "$REBUFF" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [ -n "$REBUFF" ] && exit 0
  echo "ERROR: usage: replay-scaling.sh REBUFF_BIN" >&2
  exit 1
fi
case $ROUNDS in ''|*[!0-9]*|0) echo "ERROR: ROUNDS must be a positive integer" >&2; exit 2;; esac
case $LINES in ''|*[!0-9]*|0) echo "ERROR: LINES must be a positive integer" >&2; exit 2;; esac
case $TMO in ''|*[!0-9]*|0) echo "ERROR: TIMEOUT must be a positive integer" >&2; exit 2;; esac

# ---- REBUFF_BIN: a path, or a command name found in PATH
if [[ "$REBUFF" != */* ]] && command -v -- "$REBUFF" >/dev/null 2>&1; then
  REBUFF=$(command -v -- "$REBUFF")
fi
if [ ! -f "$REBUFF" ] || [ ! -x "$REBUFF" ]; then
  echo "ERROR: REBUFF_BIN '$REBUFF' does not exist or is not executable" >&2
  exit 1
fi
REBUFF=$(cd "$(dirname "$REBUFF")" && pwd)/$(basename "$REBUFF")

# ---- tools and inputs
[ -x /usr/bin/time ] || { echo "ERROR: /usr/bin/time not found (apt-get install time)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "ERROR: python3 not found" >&2; exit 2; }
command -v timeout >/dev/null || { echo "ERROR: timeout (coreutils) not found" >&2; exit 2; }
AUTHGEN=$SHARED/bench/gen_authlog.py
WEBGEN=$HERE/gen_weblog.py
declare -A CFG LOG GEN
CFG[sshd]=$SHARED/bench/sshd.yml;  LOG[sshd]=$WORK/auth-$LINES.log
CFG[plus40]=$HERE/sshd-plus40.yml; LOG[plus40]=$WORK/auth-$LINES.log
CFG[web]=$HERE/web.yml;            LOG[web]=$WORK/web-$LINES.log
GEN[$WORK/auth-$LINES.log]=$AUTHGEN
GEN[$WORK/web-$LINES.log]=$WEBGEN
NAMES=(sshd plus40 web)
for f in "$AUTHGEN" "$WEBGEN" "${CFG[sshd]}" "${CFG[plus40]}" "${CFG[web]}"; do
  [ -f "$f" ] || { echo "ERROR: missing $f (is the kit cloned at $SHARED? set SHARED=)" >&2; exit 2; }
done
mkdir -p "$WORK" || exit 2

# ---- logs: generated once; regenerated when absent, short, without stats, or older than their generator
for log in "$WORK/auth-$LINES.log" "$WORK/web-$LINES.log"; do
  gen=${GEN[$log]}
  if [ -s "$log" ] && [ -s "$log.stats.json" ] && [ ! "$gen" -nt "$log" ] \
     && [ "$(wc -l < "$log")" -eq "$LINES" ]; then
    echo "log present: $log"
    continue
  fi
  echo "generating $log ($LINES lines) with $(basename "$gen") ..."
  if ! timeout 3600 python3 "$gen" --lines "$LINES" --out "$log.tmp" --stats "$log.stats.json" \
       2> "$log.gen.err"; then
    echo "ERROR: $gen failed:" >&2; tail -n 5 "$log.gen.err" >&2; rm -f "$log.tmp"; exit 2
  fi
  mv "$log.tmp" "$log" && rm -f "$log.gen.err"
done

RUN=$WORK/runs/$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$RUN" || exit 2
RES=$RUN/results.tsv
printf 'name\tround\trc\twall_s\ttime_e_s\trss_kb\tout\n' > "$RES"
{
  echo "# $(date -u +%FT%TZ) host=$(hostname) cpus=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "# rebuff: $REBUFF ($(timeout 10 "$REBUFF" --version 2>/dev/null < /dev/null | head -n 1))"
  echo "# lines=$LINES rounds=$ROUNDS timeout=${TMO}s results: $RUN"
} | tee "$RUN/header.txt"

# ---- measurement
measure() {   # measure NAME ROUND
  local name=$1 r=$2 base t0 t1 rc e m wall
  base=$RUN/$name.r$r
  t0=$(date +%s%N)
  /usr/bin/time -f '%e %M' -o "$base.time" timeout -k 5 "$TMO" \
    "$REBUFF" replay -c "${CFG[$name]}" --format json "${LOG[$name]}" < /dev/null > "$base.out" 2> "$base.err"
  rc=$?
  t1=$(date +%s%N)
  read -r e m < <(tail -n 1 "$base.time")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$r" "$rc" "$wall" "${e:-}" "${m:-0}" "$base.out" >> "$RES"
  printf '  %-7s round %s: exit %-3s wall %8.3f s  peak RSS %8.1f MiB\n' "$name" "$r" "$rc" "$wall" \
    "$(awk -v k="${m:-0}" 'BEGIN { print k / 1024 }')"
  if [ "$rc" -ne 0 ]; then
    echo "ERROR: rebuff failed on $name (exit $rc$( { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && echo ", timed out after $TMO s")):" >&2
    echo "  $REBUFF replay -c ${CFG[$name]} --format json ${LOG[$name]}" >&2
    tail -n 8 "$base.err" | sed 's/^/  | /' >&2
    exit 1
  fi
}

cat "$WORK/auth-$LINES.log" "$WORK/web-$LINES.log" > /dev/null   # warm the page cache
for r in $(seq 1 "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    measure "$name" "$r"
  done
done

# ---- report and checks (standard library only)
printf 'name\tconfig\tlog\tstats\n' > "$RUN/configs.tsv"
for name in "${NAMES[@]}"; do
  printf '%s\t%s\t%s\t%s\n' "$name" "${CFG[$name]}" "${LOG[$name]}" "${LOG[$name]}.stats.json" >> "$RUN/configs.tsv"
done
python3 - "$RUN" "$LINES" <<'PY' | tee "$RUN/report.txt"
import json, os, re, statistics, sys

run, nlines = sys.argv[1], int(sys.argv[2])
# gen_authlog.py line kinds that sshd.yml's failedlogin matches (the other auth
# configs keep that filter unchanged and add filters that never match)
AUTH_MATCHED = ["failed_password", "failed_password_invalid", "invalid_user", "closed_authenticating_user"]


def tsv(path):
    with open(path) as f:
        rows = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def filter_names(path):
    """'stream.filter' names of a reaction YAML config, in order (PyYAML if present,
    else an indentation scan that fits the bench configs)."""
    try:
        import yaml
        cfg = yaml.safe_load(open(path))
        return [f"{s}.{f}" for s, st in cfg["streams"].items() for f in st["filters"]]
    except ImportError:
        pass
    names, stream, in_streams, in_filters = [], None, False, False
    for line in open(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        ind = len(line) - len(line.lstrip(" "))
        m = re.match(r"\s*([A-Za-z0-9_.-]+):", line)
        if ind == 0:
            in_streams = bool(m and m.group(1) == "streams")
        elif in_streams and ind == 2 and m:
            stream, in_filters = m.group(1), False
        elif in_streams and ind == 4 and m:
            in_filters = m.group(1) == "filters"
        elif in_streams and in_filters and ind == 6 and m:
            names.append(f"{stream}.{m.group(1)}")
    return names


def summary_of(path):
    text = open(path, errors="replace").read()
    docs = []
    try:
        docs = [json.loads(text)]
    except ValueError:
        for line in text.splitlines():
            if line.lstrip().startswith("{"):
                try:
                    docs.append(json.loads(line))
                except ValueError:
                    pass
    for d in reversed(docs):
        if isinstance(d, dict) and isinstance(d.get("summary"), dict):
            return d["summary"]
    return None


def expected(name, cfg, stats_path):
    stats = json.load(open(stats_path))
    names = filter_names(cfg)
    notes = []
    if "expected_matches" in stats:          # gen_weblog.py
        exp = {k: int(v) for k, v in stats["expected_matches"].items()}
        if set(exp) != set(names):
            notes.append(f"config filters and stats disagree: only in config {sorted(set(names) - set(exp))}, "
                         f"only in stats {sorted(set(exp) - set(names))}")
            for n in names:
                exp.setdefault(n, None)
    else:                                    # gen_authlog.py
        total = sum(int(stats["counts"].get(k, 0)) for k in AUTH_MATCHED)
        exp = {n: (total if n == "sshd.failedlogin" else 0) for n in names}
        if "sshd.failedlogin" not in exp:
            notes.append("no sshd.failedlogin filter in the config")
    return exp, notes


runs = tsv(os.path.join(run, "results.tsv"))
cfgs = tsv(os.path.join(run, "configs.tsv"))
agg, problems = {}, []
print()
print(f"{'config':<16} {'filters':>7} {'log':<18} {'wall s (median)':>15} {'min-max':>15} {'lines/s':>11} "
      f"{'%e s':>6} {'RSS MiB':>8} {'matches':>9}")
for c in cfgs:
    rs = [r for r in runs if r["name"] == c["name"]]
    walls = [float(r["wall_s"]) for r in rs]
    es = [float(r["time_e_s"]) for r in rs if r["time_e_s"]]
    rss = [int(r["rss_kb"]) for r in rs]
    exp, notes = expected(c["name"], c["config"], c["stats"])
    sums = [summary_of(r["out"]) for r in rs]
    a = {"wall": statistics.median(walls), "rss": statistics.median(rss) / 1024.0,
         "lps": nlines / statistics.median(walls) if statistics.median(walls) > 0 else float("nan")}
    agg[c["name"]] = a
    s = sums[-1]
    print(f"{os.path.basename(c['config']):<16} {len(exp):>7} {os.path.basename(c['log']):<18} {a['wall']:>15.3f} "
          f"{min(walls):>7.3f}-{max(walls):<7.3f} {a['lps']:>11,.0f} "
          f"{(statistics.median(es) if es else float('nan')):>6.2f} {a['rss']:>8.1f} "
          f"{(s or {}).get('matches', 'n/a'):>9}")
    # ---- checks
    label = os.path.basename(c["config"])
    for n in notes:
        problems.append(f"{label}: {n}")
    for i, si in enumerate(sums, 1):
        if si is None:
            problems.append(f"{label}: round {i}: no JSON object with a 'summary' in {rs[i - 1]['out']}")
        elif s is not None and si != s:
            problems.append(f"{label}: round {i}: summary differs from the last round's")
    if s is None:
        continue
    if s.get("lines") != nlines:
        problems.append(f"{label}: summary.lines = {s.get('lines')}, the log has {nlines}")
    known = [v for v in exp.values() if v is not None]
    if len(known) == len(exp) and s.get("matches") != sum(known):
        problems.append(f"{label}: summary.matches = {s.get('matches')}, expected {sum(known)}")
    got = s.get("filters")
    if not isinstance(got, dict):
        problems.append(f"{label}: summary.filters missing or not an object")
        continue
    for k, v in exp.items():
        g = got.get(k)
        gm = g.get("matches") if isinstance(g, dict) else None
        if g is None:
            problems.append(f"{label}: summary.filters has no '{k}'")
        elif v is not None and gm != v:
            problems.append(f"{label}: {k}: matches = {gm}, expected {v}")
    for k in sorted(set(got) - set(exp)):
        problems.append(f"{label}: summary.filters has an unknown filter '{k}'")
print("  wall = median elapsed time of the whole process (page cache warm); lines/s = lines / that;")
print("  %e = /usr/bin/time's elapsed seconds; RSS = median peak RSS (/usr/bin/time %M).")
print()
b, p = agg.get("sshd"), agg.get("plus40")
if b and p:
    print(f"ratio sshd-plus40/sshd: wall {p['wall'] / b['wall']:.2f}x, lines/s {p['lps'] / b['lps']:.2f}x, "
          f"peak RSS {p['rss'] / b['rss']:.2f}x  (1 filter -> 41 filters on the same log)")
print()
for pr in problems:
    print("MISMATCH " + pr)
print(f"checks: {len(problems)} mismatch(es)" if problems else "checks: all summaries match the generators' stats")
sys.exit(3 if problems else 0)
PY
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || [ "$rc" = 3 ] || { echo "ERROR: report failed (exit $rc)" >&2; exit 2; }
if [ "$rc" = 3 ] && [ "$STRICT" = 1 ]; then exit 3; fi
exit 0
