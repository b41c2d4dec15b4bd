#!/usr/bin/python3
"""make bench: farmgated and nginx side by side, in one run, on this machine.

Both proxies get the same job: one worker, one backend farm (Debian nginx answering a small
body), keep-alive to the client and pooled keep-alive connections to the backend,
X-Forwarded-For added, no access log. wrk drives each in alternating rounds so that noise from
the shared 2 cores hits both alike; the medians and their ratios go to
<build>/bench/results.md (and results.json).

Measured per proxy: requests/s, p50 and p99 latency (wrk --latency), the proxy process's CPU
time per request (utime+stime from /proc), its resident memory after the runs (VmRSS, VmHWM).
Token signatures per 1000 requests need upstream TLS with a token key (issue 3); this run has
none and says so.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def nginx_worker(master_pid):
    """The single worker's pid (the process doing the work)."""
    end = time.time() + 5
    while time.time() < end:
        out = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise RuntimeError("no nginx worker")


def nginx_conf(d, body):
    temp = "".join("%s_temp_path %s/%s;\n" % (k, d, k) for k in
                   ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return ("daemon off; master_process on; worker_processes 1; pid %s/nginx.pid;\n"
            "error_log %s/error.log warn;\nevents { worker_connections 8192; }\n"
            "http { access_log off; %s %s }\n" % (d, d, temp, body))


def start_nginx(d, body):
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(d, body))
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, "stderr.log"), "w"))
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def parse_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "us" else n * 1000 if m.group(2) == "s" else n


def wrk(port, seconds, conns, host):
    out = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency",
                          "-H", "Host: " + host, "http://127.0.0.1:%d/bench" % port],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1)),
         "p50": parse_ms(re.search(r"50%\s+(\S+)", out).group(1)),
         "p99": parse_ms(re.search(r"99%\s+(\S+)", out).group(1)),
         "errors": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 10)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--conns", type=int, default=64)
    a = ap.parse_args()
    binary = os.path.abspath(os.path.join(a.build, "farmgated"))
    outdir = os.path.abspath(os.path.join(a.build, "bench"))
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fg-bench-")
    os.chmod(tmp, 0o755)
    host = "bench.local"
    procs = []
    try:
        be_port, fg_port, ng_port = free_port(), free_port(), free_port()
        backend = start_nginx(os.path.join(tmp, "backend"),
                              "server { listen 127.0.0.1:%d; keepalive_requests 100000; "
                              "location / { return 200 'hello from the bench backend\\n'; } }"
                              % be_port)
        procs.append(backend)
        ngproxy = start_nginx(os.path.join(tmp, "nginx-proxy"),
                              "upstream farm { server 127.0.0.1:%d; keepalive 64; "
                              "keepalive_requests 100000; }\n"
                              "server { listen 127.0.0.1:%d; keepalive_requests 100000; "
                              "location / { proxy_pass http://farm; proxy_http_version 1.1; "
                              "proxy_set_header Connection ''; "
                              "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
                              "proxy_set_header X-Forwarded-Proto $scheme; } }"
                              % (be_port, ng_port))
        procs.append(ngproxy)
        cfg = {
            "listeners": [{"address": "127.0.0.1", "port": fg_port}],
            "log": {"access": "off"},
            "webFarms": [{"name": "bench",
                          "servers": [{"address": "127.0.0.1", "httpPort": be_port}]}],
            "rules": [{"name": "ARR_bench_loadbalance", "patternSyntax": "Wildcard",
                       "stopProcessing": True, "match": {"url": "*"},
                       "conditions": [{"input": "{HTTP_HOST}", "pattern": host}],
                       "action": {"type": "Rewrite", "url": "http://bench/{R:0}"}}],
        }
        cfgpath = os.path.join(tmp, "farmgated.json")
        with open(cfgpath, "w") as f:
            json.dump(cfg, f)
        fg = subprocess.Popen([binary, "-c", cfgpath], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(outdir, "farmgated.log"), "w"))
        procs.append(fg)
        for p in (be_port, fg_port, ng_port):
            wait_port(p)
        targets = {"farmgated": (fg_port, fg.pid), "nginx": (ng_port, nginx_worker(ngproxy.pid))}
        # warm both (pools, caches) before measuring
        for name, (port, _) in targets.items():
            wrk(port, 2, a.conns, host)
        runs = {name: [] for name in targets}
        for rnd in range(a.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(list(targets)))
            for name in order:
                port, pid = targets[name]
                c0 = cpu_seconds(pid)
                r = wrk(port, a.seconds, a.conns, host)
                r["cpu_us_per_req"] = (cpu_seconds(pid) - c0) * 1e6 / max(r["requests"], 1)
                runs[name].append(r)
                print("round %d %-9s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  cpu %.1f us/req  "
                      "errors %d" % (rnd + 1, name, r["rps"], r["p50"], r["p99"],
                                     r["cpu_us_per_req"], r["errors"]), flush=True)
        res = {}
        for name, (port, pid) in targets.items():
            rs = runs[name]
            res[name] = {
                "rps": statistics.median(x["rps"] for x in rs),
                "p50_ms": statistics.median(x["p50"] for x in rs),
                "p99_ms": statistics.median(x["p99"] for x in rs),
                "cpu_us_per_req": statistics.median(x["cpu_us_per_req"] for x in rs),
                "errors": sum(x["errors"] for x in rs),
                "rss_kb": mem_kb(pid, "VmRSS"),
                "hwm_kb": mem_kb(pid, "VmHWM"),
            }
        f, n = res["farmgated"], res["nginx"]
        ratio = {k: (f[k] / n[k] if n[k] else float("nan"))
                 for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_kb")}
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": a.seconds,
                "rounds": a.rounds, "connections": a.conns, "cores": os.cpu_count(),
                "nginx": subprocess.run(["nginx", "-v"], capture_output=True,
                                        text=True).stderr.strip()}
        with open(os.path.join(outdir, "results.json"), "w") as fh:
            json.dump({"meta": meta, "results": res, "ratio": ratio, "runs": runs}, fh, indent=1)
        lines = [
            "# farmgated vs nginx (make bench, %s)" % meta["date"], "",
            "Small keep-alive GETs through each proxy to the same nginx backend; one worker "
            "each; wrk -t1 -c%d, %d rounds of %d s alternating, medians. %d cores shared by "
            "wrk, the backend and the proxy. %s." % (a.conns, a.rounds, a.seconds,
                                                    meta["cores"], meta["nginx"]), "",
            "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
            "| requests/s | %.0f | %.0f | %.2f |" % (f["rps"], n["rps"], ratio["rps"]),
            "| p50 latency (ms) | %.3f | %.3f | %.2f |" % (f["p50_ms"], n["p50_ms"],
                                                          ratio["p50_ms"]),
            "| p99 latency (ms) | %.3f | %.3f | %.2f |" % (f["p99_ms"], n["p99_ms"],
                                                          ratio["p99_ms"]),
            "| proxy CPU per request (us) | %.1f | %.1f | %.2f |" % (
                f["cpu_us_per_req"], n["cpu_us_per_req"], ratio["cpu_us_per_req"]),
            "| RSS after the runs (kB) | %d | %d | %.2f |" % (f["rss_kb"], n["rss_kb"],
                                                              ratio["rss_kb"]),
            "| token signatures per 1000 requests | n/a | n/a | n/a (plain-HTTP farm: no "
            "upstream TLS before issue 3) |",
            "| errors (socket + non-2xx) | %d | %d | |" % (f["errors"], n["errors"]), "",
        ]
        text = "\n".join(lines)
        with open(os.path.join(outdir, "results.md"), "w") as fh:
            fh.write(text)
        print()
        print(text)
        print("farmgated/nginx requests/s ratio: %.2f (results in %s)"
              % (ratio["rps"], os.path.join(outdir, "results.md")))
        return 0
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    sys.exit(main())
