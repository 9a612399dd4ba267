#!/usr/bin/env python3
"""Firewall set benchmarks (issue: native firewall sets). Needs root: every
case runs the daemon in a network namespace it creates (`ip netns`), so the
host's ruleset is never touched.

    sudo python3 bench/firewall.py [REBUFF_BIN] [AUTH_LOG]

Cases (one line each per round, then medians; record them in
bench/RESULTS.md with machine, commit and date):

  burst:    20,000 distinct addresses written to the tailed log at once;
            time from that write to all 20,000 elements in the kernel set.
  restore:  the same 20,000 pending bans, daemon started in a fresh
            namespace (a cold restart): time from the daemon's start to all
            20,000 back in the kernel.
  big-set:  a set holding 100,000 elements takes one more ban: time from
            the log write to the element in the kernel (median of 20 bans).
  live-nft: the live benchmark of bench/daemon-live.sh (1 M-line auth.log,
            ban + unban after 1h) with `type: nftables` actions: wall time
            from start to exit, lines per second, peak RSS.
  live-noaction: the same without actions, in the same round: the ratio
            live-nft / live-noaction is what the bans cost on a shared,
            noisy machine.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "release", "rebuff")
LOG = sys.argv[2] if len(sys.argv) > 2 else "/tmp/kit-bench/auth-1000000.log"
ROUNDS = int(os.environ.get("ROUNDS", "3"))

JAIL = """
state_directory: {work}/state
firewall:
  reconcile: null
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{work}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for \\S+ from <ip> port'
        actions:
          ban:
            type: nftables
            options: {{set: bans, action: add}}
          unban:
            type: nftables
            options: {{set: bans, action: delete}}
            after: 1h
"""

LIVE = """
state_directory: {work}/state
patterns:
  ip:
    type: ip
    ignorecidr: ['127.0.0.0/8', '::1/128']
streams:
  sshd:
    cmd: ['cat', '{log}']
    filters:
      failedlogin:
        regex:
          - 'sshd\\[\\d+\\]: Failed password for .* from <ip> port \\d+'
          - 'sshd\\[\\d+\\]: Invalid user .* from <ip> port \\d+'
          - 'sshd\\[\\d+\\]: Connection closed by authenticating user .* <ip> port \\d+'
          - 'sshd\\[\\d+\\]: Disconnected from authenticating user .* <ip> port \\d+'
        retry: 5
        retryperiod: 10m
        actions:
          ban:
            type: nftables
            options: {{set: bans, action: add}}
          unban:
            type: nftables
            options: {{set: bans, action: delete}}
            after: 1h
"""


class Netns:
    count = 0

    def __init__(self):
        Netns.count += 1
        self.name = f"rebuff-bench-{os.getpid()}-{Netns.count}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, argv):
        return ["ip", "netns", "exec", self.name] + argv

    def run(self, argv, **kw):
        return subprocess.run(self.argv(argv), check=True, capture_output=True, text=True, **kw)

    def count_elements(self, set_name):
        out = subprocess.run(
            self.argv(["nft", "list", "set", "inet", "reaction", set_name]),
            capture_output=True, text=True)
        if out.returncode != 0:
            return 0
        # One element per "," plus one, inside "elements = { ... }".
        text = out.stdout
        start = text.find("elements = {")
        if start < 0:
            return 0
        body = text[start:text.find("}", start)]
        return body.count(",") + 1

    def has(self, set_name, element):
        out = subprocess.run(
            self.argv(["nft", "get", "element", "inet", "reaction", set_name, "{ %s }" % element]),
            capture_output=True)
        return out.returncode == 0

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Applied:
    """Sums `operations=N` of the daemon's `set operations applied` debug
    lines: what the kernel has, without listing a big set to know it."""

    PATTERN = re.compile(rb"operations=(\d+) failed=(\d+).*set operations applied")

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.total = 0

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.total
        end = data.rfind(b"\n") + 1
        self.offset += end
        for m in self.PATTERN.finditer(data[:end]):
            self.total += int(m.group(1)) - int(m.group(2))
        return self.total


def failed(ip):
    return f"Mar  3 00:00:00 web-01 sshd[42]: Failed password for root from {ip} port 22 ssh2\n"


def addresses(n, base=10):
    return [f"{base}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1, n + 1)]


def start(ns, work, config):
    out = open(os.path.join(work, "daemon.out"), "a")
    return subprocess.Popen(
        ns.argv([BIN, "start", "-l", "DEBUG", "-c", config, "-s", os.path.join(work, "sock")]),
        stdout=out, stderr=subprocess.STDOUT)


def wait_for(what, check, timeout=120, every=0.02):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return time.monotonic()


def stop(daemon):
    daemon.terminate()
    daemon.wait(timeout=60)


def burst_and_restore(results):
    work = tempfile.mkdtemp()
    ns = Netns()
    try:
        config = os.path.join(work, "c.yml")
        with open(config, "w") as f:
            f.write(JAIL.format(work=work))
        open(os.path.join(work, "input.log"), "w").close()
        applied = Applied(os.path.join(work, "daemon.out"))
        daemon = start(ns, work, config)
        wait_for("the socket", lambda: os.path.exists(os.path.join(work, "sock")))
        wait_for("the table", lambda: ns.run(["nft", "list", "tables"]).stdout.count("reaction") > 0)
        text = "".join(failed(ip) for ip in addresses(20_000))
        t0 = time.monotonic()
        with open(os.path.join(work, "input.log"), "a") as f:
            f.write(text)
        t1 = wait_for("20,000 bans", lambda: applied.poll() >= 20_000, every=0.005)
        assert ns.count_elements("bansv4") == 20_000
        results.setdefault("burst", []).append(t1 - t0)
        print(f"burst 20000 bans in the kernel {t1 - t0:.3f} s after the write", flush=True)
        stop(daemon)
        # A cold restart: a fresh namespace, the log emptied (its lines
        # would be new matches), the state kept.
        open(os.path.join(work, "input.log"), "w").close()
        fresh = Netns()
        try:
            applied = Applied(os.path.join(work, "daemon.out"))
            applied.poll()
            applied.total = 0
            t0 = time.monotonic()
            daemon = start(fresh, work, config)
            t1 = wait_for("20,000 restored", lambda: applied.poll() >= 20_000, every=0.005)
            assert fresh.count_elements("bansv4") == 20_000
            results.setdefault("restore", []).append(t1 - t0)
            print(f"restore 20000 bans in the kernel {t1 - t0:.3f} s after the start", flush=True)
            stop(daemon)
        finally:
            fresh.close()
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)


def big_set(results):
    work = tempfile.mkdtemp()
    ns = Netns()
    try:
        config = os.path.join(work, "c.yml")
        with open(config, "w") as f:
            f.write(JAIL.format(work=work))
        with open(os.path.join(work, "input.log"), "w") as f:
            f.write("".join(failed(ip) for ip in addresses(100_000)))
        applied = Applied(os.path.join(work, "daemon.out"))
        daemon = start(ns, work, config)
        wait_for("100,000 bans", lambda: applied.poll() >= 100_000, every=0.05)
        time.sleep(1)
        times = []
        for n, ip in enumerate(addresses(20, base=11)):
            t0 = time.monotonic()
            with open(os.path.join(work, "input.log"), "a") as f:
                f.write(failed(ip))
            t1 = wait_for(f"the ban of {ip}", lambda: applied.poll() >= 100_001 + n, every=0.001)
            times.append(t1 - t0)
        assert ns.has("bansv4", ip)
        med = statistics.median(times)
        results.setdefault("big-set", []).append(med)
        print(f"big-set one more ban in a 100000-element set {med * 1000:.1f} ms (median of 20)", flush=True)
        stop(daemon)
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)


def live(results, name="live-nft"):
    work = tempfile.mkdtemp()
    ns = Netns()
    try:
        config = os.path.join(work, "live.yml")
        text = LIVE.format(work=work, log=LOG)
        if name == "live-noaction":
            text = text[:text.index("        actions:")]
        with open(config, "w") as f:
            f.write(text)
        lines = sum(1 for _ in open(LOG, "rb"))
        time_file = os.path.join(work, "time")
        t0 = time.monotonic()
        subprocess.run(
            ns.argv(["/usr/bin/time", "-f", "%e %M", "-o", time_file, BIN, "start", "-c", config,
                     "-s", os.path.join(work, "sock")]),
            stdout=open(os.path.join(work, "out.log"), "w"), stderr=subprocess.STDOUT, check=True)
        wall = time.monotonic() - t0
        secs, kib = open(time_file).read().split()
        secs = float(secs)
        bans = ns.count_elements("bansv4") + ns.count_elements("bansv6")
        out = open(os.path.join(work, "out.log")).read()
        runs = out.count(": run [")
        results.setdefault(name, []).append((secs, int(kib) / 1024))
        print(f"{name} {secs:.2f} s {lines / secs / 1e6:.2f} M-lines/s-end-to-end peak {int(kib) / 1024:.1f} MiB "
              f"run-lines {runs} elements-left {bans} (wall {wall:.2f} s)", flush=True)
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    for program in ["ip", "nft", "/usr/bin/time"]:
        if shutil.which(program) is None:
            raise SystemExit(f"needs {program}")
    if not os.access(BIN, os.X_OK):
        raise SystemExit(f"no rebuff binary at {BIN} (cargo build --release)")
    results = {}
    for _ in range(ROUNDS):
        burst_and_restore(results)
        big_set(results)
        if os.path.exists(LOG):
            live(results)
            live(results, "live-noaction")
        else:
            print(f"no log at {LOG} (bash ../shared/bench/setup.sh): live-nft skipped")
    for name, values in results.items():
        if name.startswith("live"):
            print(f"median {name}: {statistics.median(v[0] for v in values):.2f} s, "
                  f"peak RSS {statistics.median(v[1] for v in values):.1f} MiB ({len(values)} rounds)")
        elif name == "big-set":
            print(f"median big-set: {statistics.median(values) * 1000:.1f} ms ({len(values)} rounds)")
        else:
            print(f"median {name}: {statistics.median(values):.3f} s ({len(values)} rounds)")


    if "live-nft" in results and "live-noaction" in results:
        ratios = [a[0] / b[0] for a, b in zip(results["live-nft"], results["live-noaction"])]
        print(f"median ratio live-nft / live-noaction: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
