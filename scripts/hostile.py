#!/usr/bin/env python3
"""Hostile-input measurements of the exporter (docs/reliability.md, "Hostile input").

Runs a hostile gravity API (this script) and the exporter binary in remote mode against it
(an empty procfs root, so no gravity process is visible), switches the API through each
attack, and prints what the exporter did: /metrics size and latency while the attack runs,
the exporter's RSS after it, and the counters that record what was cut or dropped.

    cargo build --release
    cargo bench --bench scrape --no-run          # the Rust scraper (optional)
    python3 scripts/hostile.py target/release/gravity-exporter [target/release/deps/scrape-<hash>]

With the second argument, the 1e6-series attack is also measured by that Rust client in a
process of its own (one keep-alive connection, a scrape every 50 ms), so the p99 is the
exporter's and not the Python client's.

Not part of the test suite (it measures; tests/hostile.rs asserts).
"""
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
METRICS = open(os.path.join(FIX, "metrics.prom"), "rb").read()
STATUS = open(os.path.join(FIX, "status-incremental.json"), "rb").read()


def watermark_status(n, name_len):
    st = json.loads(STATUS)
    wm = st["watermarks"]["mysqlstream"]
    st["watermarks"] = {("w%04d" % i) + "x" * name_len: wm for i in range(n)}
    return json.dumps(st).encode()


def million_series():
    out = [b"# HELP hostile_series x\n# TYPE hostile_series gauge\n"]
    for i in range(1_000_000):
        out.append(b'hostile_series{i="%d"} 1\n' % i)
    return METRICS + b"".join(out)


def long_lines(n, length):
    v = b"x" * length
    out = [b"# HELP hostile_long x\n# TYPE hostile_long gauge\n"]
    for i in range(n):
        out.append(b'hostile_long{i="%d",v="%s"} 1\n' % (i, v))
    return METRICS + b"".join(out)


MODE = {"name": "normal", "status": STATUS, "metrics": METRICS}


class Gravity(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if MODE["name"] == "hang":
            time.sleep(3600)
            return
        body = {"/status": MODE["status"], "/metrics": MODE["metrics"]}.get(self.path, b"")
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(addr, timeout=10):
    t0 = time.perf_counter()
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=timeout) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def sample(body, name, needle=""):
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name) and needle in line and not line.startswith("#"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("nan")


def scrape_for(addr, seconds):
    lat, sizes = [], []
    end = time.time() + seconds
    while time.time() < end:
        dt, body = scrape(addr)
        lat.append(dt)
        sizes.append(len(body))
        time.sleep(0.05)
    return lat, sizes, body


def main():
    exe = sys.argv[1]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gravity)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    gaddr = "127.0.0.1:%d" % srv.server_address[1]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    eport = s.getsockname()[1]
    s.close()
    eaddr = "127.0.0.1:%d" % eport
    procroot = tempfile.mkdtemp()
    exp = subprocess.Popen(
        [exe, "--web.listen-address", eaddr, "--gravity.url", "http://" + gaddr,
         "--path.procfs", procroot, "--gravity.pid", "4194000",
         "--collector.interval", "1s", "--probe.interval", "0s"],
        stderr=open(os.path.join(procroot, "exporter.log"), "w"))
    try:
        time.sleep(3)
        _, body = scrape(eaddr)
        base_rss = rss_kib(exp.pid)
        print("baseline: gravity_up=%s rss=%d KiB /metrics=%d bytes" % (
            sample(body, "gravity_up"), base_rss, len(body)))

        def attack(name, seconds=8, **mode):
            MODE.update({"name": name, "status": STATUS, "metrics": METRICS})
            MODE.update(mode)
            lat, sizes, body = scrape_for(eaddr, seconds)
            peak = rss_kib(exp.pid)
            MODE.update({"name": "normal", "status": STATUS, "metrics": METRICS})
            time.sleep(4)
            after = rss_kib(exp.pid)
            print("%-28s /metrics max %8d bytes, p99 %6.1f ms, n=%d; RSS during %6d KiB, after %6d KiB (%+d)" % (
                name, max(sizes), p99(lat) * 1000, len(lat), peak, after, after - base_rss))
            return body

        rust = None
        if len(sys.argv) > 2:
            # 240 scrapes with 50 ms pauses: about the 12 s of the attack
            rust = subprocess.Popen([sys.argv[2], "http://%s/metrics" % eaddr, "240", "50"],
                                    stdout=subprocess.PIPE, text=True)
        body = attack("metrics 1e6 series", seconds=12, metrics=million_series())
        if rust is not None:
            out, _ = rust.communicate(timeout=120)
            print("    Rust client during the attack:", out.strip())
        print("    passthrough series:", sample(body, "gravity_exporter_passthrough_series"),
              "dropped by cap:", sample(body, "gravity_exporter_passthrough_dropped_series_total"))
        body = attack("metrics 30 MB long lines", seconds=12, metrics=long_lines(6000, 5000))
        print("    dropped lines:", sample(body, "gravity_exporter_dropped_total", "passthrough_line"),
              "bytes:", sample(body, "gravity_exporter_dropped_total", "passthrough_bytes"))
        body = attack("metrics 40 MB (over cap)", seconds=6, metrics=long_lines(8000, 5000))
        print("    dropped answers:", sample(body, "gravity_exporter_dropped_total", "api_body"))
        # /status attacks after the /metrics ones: what they leave resident (glibc's arenas)
        # is reported on its own instead of being added to the figures above
        print("after the /metrics attacks: RSS %d KiB (baseline %d KiB, %+d KiB)" % (
            rss_kib(exp.pid), base_rss, rss_kib(exp.pid) - base_rss))
        body = attack("watermarks 1000 x 10KB", status=watermark_status(1000, 10_000))
        print("    truncated label values:", sample(body, "gravity_exporter_truncated_total", 'label_value'))
        body = attack("version 15 MB", status=json.dumps(dict(json.loads(STATUS), version="v" * 15_000_000)).encode())
        print("    truncated label values:", sample(body, "gravity_exporter_truncated_total", 'label_value'))
        inf = METRICS + b"# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{pipeline=\"x\"} +Inf\n"
        body = attack("retry counter +Inf", seconds=4, metrics=METRICS.replace(b"gravity_scheduler_retry_counter{", b"gravity_scheduler_retry_counter_old{") + inf.split(METRICS)[1])
        huge = METRICS.replace(b"gravity_scheduler_retry_counter{", b"gravity_scheduler_retry_counter_old{") + b"# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{pipeline=\"x\"} 1e300\n"
        body = attack("retry counter 1e300", seconds=4, metrics=huge)
        print("    gravity_retry_total{other}:", sample(body, "gravity_retry_total", 'reason="other"'))
        collide = METRICS + b"# HELP gravity_up x\n# TYPE gravity_up gauge\ngravity_up 1\n"
        body = attack("collision gravity_up", seconds=4, metrics=collide)
        print("    '# TYPE gravity_up' lines:", body.count(b"# TYPE gravity_up "),
              "collisions dropped:", sample(body, "gravity_exporter_dropped_total", "collision"))
        with open(os.path.join(procroot, "collide.prom"), "wb") as f:
            f.write(body)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        bad = [l for l in (r.stdout + r.stderr).decode().splitlines() if "error" in l.lower()]
        print("    promtool exit %d, errors: %s" % (r.returncode, bad[:3]))

        # gravity hangs: how long until the pass-through is withheld
        MODE["name"] = "hang"
        t0 = time.time()
        while time.time() - t0 < 30:
            _, body = scrape(eaddr)
            if b"gravity_scheduler_retry_counter" not in body:
                break
            time.sleep(0.2)
        print("hang: pass-through withheld after %.1f s; stale=%s; age(gravity_metrics)=%s; gravity_up=%s" % (
            time.time() - t0, sample(body, "gravity_exporter_passthrough_stale"),
            sample(body, "gravity_exporter_source_age_seconds", "gravity_metrics"), sample(body, "gravity_up")))
        MODE["name"] = "normal"
        time.sleep(3)

        # 1000 idle sockets, re-opened as they are closed
        socks = [socket.create_connection(("127.0.0.1", eport)) for _ in range(1000)]
        lat = []
        ok = 0
        for _ in range(20):
            for i, sk in enumerate(socks):
                sk.setblocking(False)
                try:
                    if sk.recv(1) == b"":
                        socks[i] = socket.create_connection(("127.0.0.1", eport))
                except BlockingIOError:
                    pass
                except OSError:
                    socks[i] = socket.create_connection(("127.0.0.1", eport))
            try:
                dt, body = scrape(eaddr, timeout=10)
                lat.append(dt)
                ok += 1
            except Exception as e:  # noqa: BLE001
                print("    scrape failed:", e)
            time.sleep(0.5)
        print("1000 idle sockets: %d/20 scrapes ok, p99 %.1f ms, evicted %s, rejected %s" % (
            ok, p99(lat) * 1000, sample(body, "gravity_exporter_connections_evicted_total"),
            sample(body, "gravity_exporter_connections_rejected_total")))
        for sk in socks:
            sk.close()
    finally:
        exp.terminate()
        exp.wait()
    for args in (["--collector.interval=7000000000000000000s"],
                 ["--collector.interval=5000000000000000000s5000000000000000000s"]):
        r = subprocess.run([exe, "--web.listen-address", "127.0.0.1:0"] + args, capture_output=True, timeout=20)
        print("%s: exit %d: %s" % (args[0], r.returncode, r.stderr.decode().strip()[:160]))


if __name__ == "__main__":
    main()
