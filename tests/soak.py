#!/usr/bin/python3
"""make soak: thousands of concurrent TLS connections through farmgated, for minutes.

    tests/soak.py --build DIR [--seconds 600] [--conns 2000] [--warmup 60] [--out DIR]

The path is the appliance's: clients speak TLS 1.3 to farmgated's HTTPS listener (a P-256
certificate), farmgated proxies to an HTTPS nginx that requires a client certificate, and
farmgated's is on a SoftHSM token (EC P-256, generated there). wrk keeps --conns keep-alive
TLS connections busy for --seconds. Every 5 s farmgated's RSS and open file descriptors
are sampled.

Pass criteria (the result says which failed):
  * zero errors: no wrk socket error (connect, read, write, timeout) and no non-2xx answer;
  * farmgated alive at the end, no error line in its log;
  * RSS growth under 5 %: the median of the last minute against the median of the minute
    after the warm-up;
  * no file-descriptor leak: once the clients have gone and the idle backend connections
    have expired, farmgated holds no more descriptors than before the load.

Results: DIR/soak/result.md and result.json (default DIR = the build directory).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import pki  # noqa: E402
from bench import mem_kb, parse_wrk  # noqa: E402

HOST = "secure.soak"
MAX_GROWTH = 0.05


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def sampler(pid, stop, samples, t0):
    while not stop.wait(5):
        try:
            samples.append((time.monotonic() - t0, mem_kb(pid, "VmRSS"), fds(pid)))
        except OSError:
            return


def window(samples, start, end):
    xs = [rss for t, rss, _ in samples if start <= t < end]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--out")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    out_dir = os.path.join(os.path.abspath(a.out or build), "soak")
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.join(out_dir, "run")
    subprocess.run(["rm", "-rf", work])
    os.makedirs(work)
    for d in (build, out_dir, work):
        os.chmod(d, os.stat(d).st_mode | 0o055)  # nginx workers (nobody) read the token dir
    nofile = 4 * a.conns + 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, max(nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))

    env = harness.Env(os.path.join(build, "farmgated"), work, build=build)
    result = {"seconds": a.seconds, "conns": a.conns, "warmup": a.warmup,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    problems = []
    try:
        ca = pki.Pki(env, "ca")
        tok = pki.SoftToken(env)
        client = tok.client_cert(ca, "ec256", "soak-appliance")
        be_crt, be_key = ca.server_cert("backend", ["DNS:backend.soak"])
        ng = pki.TlsNginx(env, be_crt, be_key, client_ca=ca.crt, users={client.sha1: "appliance"},
                          name="backend", worker_connections=a.conns + 256).start()
        front_crt, front_key = ca.server_cert("front", ["DNS:" + HOST, "IP:127.0.0.1"])
        cfg = harness.make_config(
            farms=[harness.farm("secure", [harness.server(80, hostName="backend.soak", httpsPort=ng.port)],
                                protocol={"preserveHostHeader": False, "clientCertHash": client.sha1,
                                          "backendCaFile": ca.crt})],
            rules=[dict(harness.arr_lb_rule("secure", HOST),
                        action={"type": "Rewrite", "url": "https://secure/{R:0}"})],
            listeners=[{"address": "127.0.0.1", "port": None,
                        "ssl": {"certificates": [{"certificateFile": front_crt, "keyFile": front_key}]}}],
            tokens=[tok.token_cfg()])
        fg = env.farmgated(cfg)
        pid = fg.pid
        r = harness.curl(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: " + HOST,
                          "https://127.0.0.1:%d/first" % fg.port], timeout=30)
        assert r.stdout.strip() == b"200", "a first request through the stack: %r %r" % (r.stdout, r.stderr)
        time.sleep(1)
        fds_before = fds(pid)
        rss_before = mem_kb(pid, "VmRSS")
        print("soak: %d TLS connections for %d s through farmgated (pid %d) on https://127.0.0.1:%d/"
              % (a.conns, a.seconds, pid, fg.port), flush=True)
        samples, stop = [], threading.Event()
        t0 = time.monotonic()
        th = threading.Thread(target=sampler, args=(pid, stop, samples, t0), daemon=True)
        th.start()
        wrk = subprocess.run(["wrk", "-t2", "-c%d" % a.conns, "-d%ds" % a.seconds, "--timeout", "10s",
                              "--latency", "-H", "Host: " + HOST, "https://127.0.0.1:%d/soak" % fg.port],
                             capture_output=True, text=True, timeout=a.seconds + 120)
        stop.set()
        th.join()
        w = parse_wrk(wrk.stdout, wrk.stderr)
        result["wrk"] = w
        print(wrk.stdout, flush=True)
        # the clients are gone: wait for the idle backend connections to expire
        fds_after, deadline = fds(pid), time.monotonic() + 120
        while fds_after > fds_before and time.monotonic() < deadline:
            time.sleep(2)
            fds_after = fds(pid)
        early = window(samples, a.warmup, a.warmup + 60)
        late = window(samples, a.seconds - 60, a.seconds + 1)
        growth = (late - early) / early if early and late else None
        result.update({"rss_kb_before": rss_before, "rss_kb_after_warmup": early, "rss_kb_last_minute": late,
                       "rss_kb_peak": max(s[1] for s in samples) if samples else None,
                       "rss_growth": growth, "fds_before": fds_before, "fds_after": fds_after,
                       "fds_peak": max(s[2] for s in samples) if samples else None,
                       "samples": samples})
        if w["errors"]:
            problems.append("%d errors (socket errors %d, non-2xx %d)" % (w["errors"], w["socket_errors"],
                                                                          w["non2xx"]))
        if growth is None or growth >= MAX_GROWTH:
            problems.append("RSS growth %s (limit %.0f %%)" % ("unknown" if growth is None else
                                                              "%.1f %%" % (100 * growth), 100 * MAX_GROWTH))
        if fds_after > fds_before:
            problems.append("%d descriptors before the load, %d after" % (fds_before, fds_after))
        fg.assert_alive()
        errors = [l for l in fg.log_text().splitlines() if " error:" in l]
        if errors:
            problems.append("%d error lines in farmgated's log, e.g. %s" % (len(errors), errors[0]))
    except Exception as e:  # noqa: the result says why
        problems.append("%s: %s" % (type(e).__name__, e))
    finally:
        env.close()
    result["problems"] = problems
    result["verdict"] = "PASS" if not problems else "FAIL"
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    w = result.get("wrk") or {}
    mib = lambda kb: "%.1f MiB" % (kb / 1024) if kb else "-"  # noqa: E731
    md = ["# farmgated soak (%s): %s" % (result["started"], result["verdict"]), "",
          "%d concurrent keep-alive TLS 1.3 connections (wrk -t2) to farmgated's HTTPS listener, "
          "proxied over TLS to nginx requiring farmgated's client certificate (key on SoftHSM), "
          "for %d s; warm-up %d s." % (a.conns, a.seconds, a.warmup), "",
          "| figure | value |", "|---|---|",
          "| requests | %s (%s/s) |" % (w.get("requests", "-"), "%.0f" % w["rps"] if w else "-"),
          "| p50 / p99 latency | %s / %s ms |" % (w.get("p50", "-"), w.get("p99", "-")),
          "| errors (socket / non-2xx) | %s / %s |" % (w.get("socket_errors", "-"), w.get("non2xx", "-")),
          "| RSS before / after warm-up / last minute / peak | %s / %s / %s / %s |" % (
              mib(result.get("rss_kb_before")), mib(result.get("rss_kb_after_warmup")),
              mib(result.get("rss_kb_last_minute")), mib(result.get("rss_kb_peak"))),
          "| RSS growth after warm-up | %s |" % ("%.2f %%" % (100 * result["rss_growth"])
                                                  if result.get("rss_growth") is not None else "-"),
          "| file descriptors before / peak / after | %s / %s / %s |" % (
              result.get("fds_before", "-"), result.get("fds_peak", "-"), result.get("fds_after", "-")),
          ""] + ["- problem: " + p for p in problems]
    with open(os.path.join(out_dir, "result.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print("written to %s/result.md" % out_dir)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
