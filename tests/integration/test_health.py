"""Health checks (issue 5): ARR's URL test and live-traffic test against real backends.

Backends are Debian's nginx (stopped, restarted on the same port, frozen with SIGSTOP) and the
harness's RecordingBackend (answers the health URL with any status or body). Health, probe
results and verify results are read through the control socket (docs/control.md); transitions
are read from farmgated's log. Timings: interval 1 s, timeout 1 s, retries 2 unless a test
says otherwise; every bound is `interval x retries + timeout` plus slack (x3 under ASan).
"""

import re
import threading
import time

from harness import (arr_lb_rule, farm, free_port, http_request, make_config, one_farm_config,
                     Reply, server, wait_for, ConnectionClosed, IncompleteResponse)

HOST = "web.local"
INTERVAL = 1.0
TIMEOUT = 1.0
RETRIES = 2
SLACK = 1.5


def hc(url="http://web.local/health", interval="00:00:01", timeout="00:00:01", retries=RETRIES,
       **kw):
    """A healthCheck object (ARR names)."""
    d = {"url": url, "interval": interval, "timeout": timeout, "retries": retries}
    d.update(kw)
    return d


def sname(port):
    return "127.0.0.1:%d" % port


def health_of(st):
    return st.get("health") or {}


def is_healthy(st):
    return st.get("healthy") is True


def is_unhealthy(st):
    return st.get("healthy") is False


def probed_ok(st):
    return st.get("healthy") is True and health_of(st).get("lastResult") == "Success"


def wait_probed_ok(fg, ports, farm="web", timeout=5.0):
    for p in ports:
        fg.wait_server(farm, p, probed_ok, timeout=timeout,
                       msg="a first successful probe of %s" % sname(p))


def _error_lines(fg, since):
    return [l for l in fg.new_log(since).splitlines() if l.strip() and "access:" not in l]


def down_lines(fg, since, port):
    """Log lines (not access lines) after since that say server port became unhealthy."""
    return [l for l in _error_lines(fg, since) if sname(port) in l and re.search(r"unhealthy", l, re.I)]


def up_lines(fg, since, port):
    """Log lines after since that say server port became healthy (and not unhealthy)."""
    return [l for l in _error_lines(fg, since)
            if sname(port) in l and re.search(r"(?<!un)healthy", l, re.I) and not re.search(r"unhealthy", l, re.I)]


def served_by(r):
    return r.header("X-Server") or r.header("X-Backend")


def get(fg, target="/", host=HOST, headers=(), timeout=10):
    return http_request(fg.port, "GET", target, host=host, headers=headers, timeout=timeout)


class GetStream:
    """A thread sending idempotent GETs (one connection each) to farmgated until stop():
    .results = [(monotonic time, status or "error: ...", serving backend)]."""

    def __init__(self, fg, host=HOST, pause=0.01, max_secs=90.0):
        self.fg, self.host, self.pause, self.max_secs = fg, host, pause, max_secs
        self.results = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        end = time.monotonic() + self.max_secs
        i = 0
        while not self._stop.is_set() and time.monotonic() < end:
            i += 1
            t = time.monotonic()
            try:
                r = http_request(self.fg.port, "GET", "/s%d" % i, host=self.host, timeout=10)
                self.results.append((t, r.status, served_by(r)))
            except (OSError, AssertionError) as e:
                self.results.append((t, "error: %s" % e, None))
            self._stop.wait(self.pause)

    def failures(self, since=0.0):
        return [x for x in self.results if x[0] >= since and x[1] != 200]

    def servers(self, since=0.0):
        return [x[2] for x in self.results if x[0] >= since and x[1] == 200]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(20)
        return False


# --------------------------------------------------------------------------
# 1. a dead server leaves rotation and comes back; GETs never fail meanwhile
# --------------------------------------------------------------------------

def test_dead_server_leaves_rotation_and_returns(env):
    a = env.nginx("echo", name="A", health_path="/health")
    b = env.nginx("echo", name="B", health_path="/health")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=hc()))
    wait_probed_ok(fg, [a.port, b.port])
    with GetStream(fg) as st:
        wait_for(lambda: {"A", "B"} <= set(st.servers()), 10, msg="the GET stream to reach both servers")
        mark = fg.log_mark()
        t_dead = time.monotonic()
        a.stop()
        limit = INTERVAL * RETRIES + TIMEOUT + SLACK
        s, dt = fg.wait_server("web", a.port, is_unhealthy, timeout=limit,
                               msg="the stopped server to leave rotation")
        assert dt <= limit * env.slow, "server A became unhealthy after %.1fs (limit %.1fs)" % (dt, limit)
        h = health_of(s)
        assert h.get("lastResult") == "ConnectionFailure", "a stopped backend's probe result: %s" % s
        assert h.get("lastStatus", 0) == 0 and h.get("consecutiveFailures", 0) >= RETRIES, s
        assert h.get("lastReason"), "an unhealthy server must show the reason: %s" % s
        # out of rotation: no live request tries it any more (no retry from it, nothing logged for it)
        time.sleep(0.3)  # requests that picked A just before are done
        t_out = time.monotonic()
        mark_out = fg.log_mark()
        time.sleep(3 * INTERVAL)  # probes keep failing meanwhile
        assert is_unhealthy(fg.server_status("web", a.port))
        tried = [l for l in fg.new_log(mark_out).splitlines() if sname(a.port) in l and '"GET /s' in l]
        assert not tried, "live requests still tried the unhealthy server:\n%s" % "\n".join(tried[:5])
        assert set(st.servers(t_out)) == {"B"}, "while A is down every GET goes to B: %s" % set(st.servers(t_out))
        downs = down_lines(fg, mark, a.port)
        assert len(downs) == 1, "expected exactly one 'unhealthy' transition line for %s, got %d:\n%s" % (
            sname(a.port), len(downs), "\n".join(downs[:6]) or fg.new_log(mark)[-2000:])
        assert re.search(r"refused|connect", downs[0], re.I), \
            "the transition line should give the reason (connection refused): %s" % downs[0]
        # it comes back
        mark_up = fg.log_mark()
        a.restart()
        t_up = time.monotonic()
        limit_up = INTERVAL + TIMEOUT + SLACK
        s, dt = fg.wait_server("web", a.port, probed_ok, timeout=limit_up,
                               msg="the restarted server to be healthy again")
        wait_for(lambda: "A" in st.servers(t_up + dt), 5, msg="GETs to reach A again")
        ups = up_lines(fg, mark_up, a.port)
        assert len(ups) == 1, "expected exactly one 'healthy' transition line for %s, got:\n%s" % (
            sname(a.port), "\n".join(ups) or fg.new_log(mark_up)[-2000:])
        assert len(down_lines(fg, mark_up, a.port)) == 0
        time.sleep(0.3)
    fails = st.failures()
    assert not fails, "%d of %d idempotent GETs failed while one healthy server remained (first: %s)" % (
        len(fails), len(st.results), fails[:3])
    assert len(st.results) >= 40, "the GET stream sent only %d requests" % len(st.results)
    assert time.monotonic() - t_dead < 60


# --------------------------------------------------------------------------
# 2. a frozen backend (SIGSTOP): probes time out
# --------------------------------------------------------------------------

def test_frozen_backend_times_out_then_thaws(env):
    a = env.nginx("echo", name="A", health_path="/health")
    b = env.nginx("echo", name="B", health_path="/health")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=hc(),
                                       protocol={"timeout": "00:00:05"}))
    wait_probed_ok(fg, [a.port, b.port])
    mark = fg.log_mark()
    a.freeze()
    limit = RETRIES * (INTERVAL + TIMEOUT) + SLACK
    s, dt = fg.wait_server("web", a.port, is_unhealthy, timeout=limit, msg="the frozen server to leave rotation")
    h = health_of(s)
    assert h.get("lastResult") == "ConnectionFailure", "a probe that timed out is a ConnectionFailure: %s" % s
    assert h.get("lastTimeMs", 0) >= TIMEOUT * 1000 * 0.8, "a timed-out probe took %s ms (timeout 1000)" % h
    downs = down_lines(fg, mark, a.port)
    assert len(downs) == 1 and re.search(r"time", downs[0], re.I), \
        "one transition line naming the timeout expected, got:\n%s" % ("\n".join(downs) or fg.new_log(mark)[-2000:])
    # live traffic no longer waits on the frozen server
    for i in range(6):
        t0 = time.monotonic()
        r = get(fg, "/f%d" % i)
        assert r.status == 200 and served_by(r) == "B", "request %d with A frozen: %s" % (i, r.summary())
        assert time.monotonic() - t0 < 1.0 * env.slow, "request %d took %.1fs" % (i, time.monotonic() - t0)
    mark_up = fg.log_mark()
    a.thaw()
    fg.wait_server("web", a.port, probed_ok, timeout=INTERVAL + TIMEOUT + SLACK,
                   msg="the thawed server to be healthy again")
    assert len(up_lines(fg, mark_up, a.port)) == 1, fg.new_log(mark_up)[-2000:]
    seen = {served_by(get(fg, "/t%d" % i)) for i in range(6)}
    assert seen == {"A", "B"}, "after thawing both servers serve: %s" % seen


# --------------------------------------------------------------------------
# 3. statusCodeMatch, responseMatch, timeout; verify (raw op and farmgatectl)
# --------------------------------------------------------------------------

def _health_farm(env):
    """Six servers whose /health answers differently; returns (fg, {key: port})."""
    ok = env.backend(name="ok")
    ok.route("/health", Reply(200, b"status: HEALTHY", delay=0.3))
    code = env.backend(name="code")
    code.route("/health", Reply(500, b"HEALTHY"))
    entity = env.backend(name="entity")
    entity.route("/health", Reply(200, b"status: healthy"))  # responseMatch is case-sensitive
    teapot = env.backend(name="teapot")
    teapot.route("/health", Reply(418, b"HEALTHY", reason="I'm a teapot"))
    slow = env.backend(name="slow")
    slow.route("/health", Reply(200, b"HEALTHY", delay=3))
    dead = free_port()
    ports = {"ok": ok.port, "code": code.port, "entity": entity.port, "teapot": teapot.port,
             "slow": slow.port, "dead": dead}
    cfg = one_farm_config([ports[k] for k in ("ok", "code", "entity", "teapot", "slow", "dead")], host=HOST,
                          healthCheck=hc(statusCodeMatch="200-299,418", responseMatch="HEALTHY"))
    fg = env.farmgated(cfg)
    return fg, ports, {"ok": ok, "code": code, "entity": entity, "teapot": teapot, "slow": slow}


EXPECTED = {"ok": ("Success", 200), "code": ("StatusCodeFailure", 500),
            "entity": ("ResponseEntityFailure", 200), "teapot": ("Success", 418),
            "slow": ("ConnectionFailure", 0), "dead": ("ConnectionFailure", 0)}


def _check_verify_results(results, ports, what):
    assert isinstance(results, list), "%s: no results list: %r" % (what, results)
    by = {r.get("server"): r for r in results}
    assert len(results) == len(ports) and set(by) == {sname(p) for p in ports.values()}, \
        "%s: one result per server expected: %s" % (what, results)
    for k, (res, status) in EXPECTED.items():
        r = by[sname(ports[k])]
        assert r.get("result") == res and r.get("status") == status, \
            "%s: server %s (%s) should give %s %d: %s" % (what, k, sname(ports[k]), res, status, r)
        assert isinstance(r.get("timeMs"), (int, float)) and r["timeMs"] >= 0, "%s: timeMs of %s: %s" % (what, k, r)
        if res != "Success":
            assert r.get("reason"), "%s: a %s needs a reason: %s" % (what, res, r)
    assert by[sname(ports["ok"])]["timeMs"] >= 250, \
        "%s: the ok server answers after 300 ms, verify says %s ms" % (what, by[sname(ports["ok"])]["timeMs"])
    t = by[sname(ports["slow"])]["timeMs"]
    assert 800 <= t <= 2500, "%s: the slow server's probe must time out after ~1000 ms, took %s ms" % (what, t)
    return by


def test_status_and_response_match_and_verify(env):
    fg, ports, bes = _health_farm(env)
    # verify: one probe of every server, now
    t0 = time.monotonic()
    ans = fg.control({"op": "verify", "farm": "web"}, timeout=20)
    took = time.monotonic() - t0
    assert ans.get("ok") is True, "verify refused: %s" % ans
    _check_verify_results(ans.get("results"), ports, "verify op")
    assert took < 3.0 * env.slow, "verify took %.1fs: the probes should run at the same time" % took
    # the periodic URL test reaches the same verdicts
    limit = RETRIES * (INTERVAL + TIMEOUT) + SLACK + 1
    for k, (res, status) in EXPECTED.items():
        want_healthy = res == "Success"
        s, _ = fg.wait_server("web", ports[k], lambda s: s.get("healthy") is want_healthy and
                              health_of(s).get("lastResult") == res, timeout=limit,
                              msg="server %s to be %s with %s" % (k, "healthy" if want_healthy else "unhealthy", res))
        if res != "ConnectionFailure":
            assert health_of(s).get("lastStatus") == status, "server %s lastStatus: %s" % (k, s)
    # live traffic only reaches the two healthy ones
    seen = set()
    for i in range(12):
        r = get(fg, "/live%d" % i)
        assert r.status == 200, r.summary()
        seen.add(served_by(r))
    assert seen == {"ok", "teapot"}, "live requests must go to the healthy servers only: %s" % seen
    assert not bes["code"].requests_not_to("/health") and not bes["entity"].requests_not_to("/health")
    # farmgatectl farm web verify: a table with one row per server
    p = fg.ctl("farm", "web", "verify")
    assert p.returncode == 0, "%s -> %d\n%s" % (p.cmd, p.returncode, p.output)
    for k, (res, status) in EXPECTED.items():
        rows = [l for l in p.stdout.splitlines() if sname(ports[k]) in l]
        assert len(rows) == 1 and res in rows[0].split(), \
            "farmgatectl verify: the row of %s should say %s:\n%s" % (k, res, p.stdout)
        if status:
            assert str(status) in rows[0].split(), "farmgatectl verify: %s row lacks status %d: %s" % (k, status, rows[0])
    p = fg.ctl("farm", "web", "verify", "--json")
    assert p.returncode == 0, p.output
    import json
    _check_verify_results(json.loads(p.stdout).get("results"), ports, "farmgatectl verify --json")


def test_health_url_turns_bad_then_good(env):
    """The same server: 500 on the health URL -> StatusCodeFailure and unhealthy after
    retries; a body without the match string -> ResponseEntityFailure; fixed -> healthy."""
    a = env.nginx("echo", name="A", health_path="/health", health_body="state=HEALTHY")
    b = env.nginx("echo", name="B", health_path="/health", health_body="state=HEALTHY")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=hc(responseMatch="HEALTHY")))
    wait_probed_ok(fg, [a.port, b.port])
    limit = RETRIES * INTERVAL + TIMEOUT + SLACK
    for status, body, result in ((500, "state=HEALTHY", "StatusCodeFailure"),
                                 (200, "state=degraded", "ResponseEntityFailure")):
        mark = fg.log_mark()
        a.set_health(status, body)
        t0 = time.monotonic()
        seen = []

        def became_unhealthy(st):
            h = health_of(st)
            seen.append((st.get("healthy"), h.get("lastResult"), h.get("consecutiveFailures")))
            return is_unhealthy(st)
        s, dt = fg.wait_server("web", a.port, became_unhealthy, timeout=limit,
                               msg="A to become unhealthy with health answer %d %r" % (status, body))
        h = health_of(s)
        assert h.get("lastResult") == result and h.get("lastStatus") == status, \
            "health answer %d %r: expected %s: %s" % (status, body, result, s)
        assert h.get("consecutiveFailures", 0) >= RETRIES, "unhealthy before %d failed probes: %s" % (RETRIES, s)
        assert (True, result, 1) in seen, \
            "after the first %s (of retries %d) A must still be healthy; states seen: %s" % (result, RETRIES, seen)
        downs = down_lines(fg, mark, a.port)
        assert len(downs) == 1 and (result in downs[0] or str(status) in downs[0] or "match" in downs[0].lower()), \
            "one transition line with the reason expected:\n%s" % ("\n".join(downs) or fg.new_log(mark)[-2000:])
        ans = fg.control_ok({"op": "verify", "farm": "web"}, timeout=20)
        by = {r["server"]: r for r in ans["results"]}
        assert by[sname(a.port)]["result"] == result and by[sname(a.port)]["status"] == status, ans
        assert by[sname(b.port)]["result"] == "Success", ans
        seen = {served_by(get(fg, "/x%d" % i)) for i in range(4)}
        assert seen == {"B"}, "A is unhealthy: %s" % seen
        mark_up = fg.log_mark()
        a.set_health(200, "state=HEALTHY")
        fg.wait_server("web", a.port, probed_ok, timeout=INTERVAL + TIMEOUT + SLACK, msg="A to be healthy again")
        assert len(up_lines(fg, mark_up, a.port)) == 1, fg.new_log(mark_up)[-2000:]
        assert time.monotonic() - t0 < 20


# --------------------------------------------------------------------------
# probes: request shape, Host, alternate host name and port, keep-alive, interval
# --------------------------------------------------------------------------

def test_probe_request_host_alternates_and_keepalive(env):
    plain = env.backend(name="plain")
    alt_host = env.backend(name="althost")
    main_c = env.backend(name="mainport")
    alt_port = env.backend(name="altport")
    cfg = one_farm_config([
        server(plain.port),
        server(alt_host.port, healthCheckAlternateHostName="probe.alt.example"),
        server(main_c.port, healthCheckAlternatePort=alt_port.port),
    ], host=HOST, healthCheck=hc(url="http://health.example.com/hc/check?deep=1"))
    fg = env.farmgated(cfg)
    t0 = time.monotonic()
    for be in (plain, alt_host, alt_port):
        wait_for(lambda: len(be.requests_to("/hc/check")) >= 4, 4 * INTERVAL + 3 * env.slow,
                 msg="4 probes at %s" % be.name)
    dt = time.monotonic() - t0
    assert dt >= 2.5 * INTERVAL, "4 probes of each server within %.1fs: the interval is %.0fs" % (dt, INTERVAL)
    for be, host in ((plain, "health.example.com"), (alt_host, "probe.alt.example"),
                     (alt_port, "health.example.com")):
        probes = be.requests_to("/hc/check")
        for q in probes:
            assert q.method == "GET" and q.target == "/hc/check?deep=1", "probe at %s: %r" % (be.name, q)
            assert q.header("Host") == host, "probe at %s: Host %r, expected %r" % (be.name, q.header("Host"), host)
        conns = {q.conn_id for q in probes}
        assert len(conns) == 1, "probes of %s must keep their connection alive: %d probes on %d connections" % (
            be.name, len(probes), len(conns))
    assert not main_c.requests_to("/hc/check"), \
        "healthCheckAlternatePort: the server's own port got %d probes" % len(main_c.requests_to("/hc/check"))
    # the status shows the URL test's settings
    f = fg.farm_status("web")
    assert (f.get("healthCheck") or {}).get("url") == "http://health.example.com/hc/check?deep=1", f
    assert (f.get("healthCheck") or {}).get("intervalMs") == 1000, f
    for p in (plain.port, alt_host.port, main_c.port):
        assert probed_ok(fg.server_status("web", p)), fg.server_status("web", p)
    # a reload with another URL (and one server fewer) takes effect for the next probes
    slow = env.backend(name="slowprobe")
    slow.route("/hc2", Reply(200, b"OK", delay=0.8))  # a probe in flight across the reload
    cfg2 = one_farm_config([server(plain.port), server(slow.port)], host=HOST,
                           healthCheck=hc(url="http://health2.example.com/hc2", timeout="00:00:02"))
    wait_for(lambda: len(plain.requests_to("/hc/check")) >= 5, 3 * env.slow, msg="a fifth probe")
    ok, line = fg.reload(cfg2)
    assert ok, line
    n_old = {be.name: len(be.requests_to("/hc/check")) for be in (plain, alt_host)}
    wait_for(lambda: len(plain.requests_to("/hc2")) >= 2 and len(slow.requests_to("/hc2")) >= 2,
             3 * INTERVAL + 3 * env.slow, msg="two probes of the new URL at each server")
    time.sleep(0.2)
    assert len(plain.requests_to("/hc/check")) <= n_old["plain"] + 1, "probes of the old URL after the reload"
    assert len(alt_host.requests_to("/hc/check")) <= n_old["althost"] + 1, "a removed server is still probed"
    assert all(q.header("Host") == "health2.example.com" for q in plain.requests_to("/hc2"))
    assert probed_ok(fg.server_status("web", slow.port))
    assert (fg.farm_status("web").get("healthCheck") or {}).get("url") == "http://health2.example.com/hc2"
    fg.assert_alive()


def test_reload_removes_a_server_while_its_probe_is_in_flight(env):
    """The old configuration's last reference can be the one an in-flight probe holds: a
    reload that removes the server (then one that removes its whole farm) while its probe
    waits for an answer. When the answer comes, the probe ends and drops that configuration,
    which frees the server's state and with it the probe (a use-after-free until this was
    fixed; ASan aborts on it). The daemon keeps serving and probes only what is configured."""
    ANSWER_AFTER = 2.0  # seconds the removed server takes to answer its probe (timeout 3 s)
    keep = env.backend(name="keep")
    spare = env.backend(name="spare")
    check = hc(url="http://web.local/hc", timeout="00:00:03")
    web = farm("web", [server(keep.port)], healthCheck=check)
    rules = [arr_lb_rule("web", HOST)]
    fg = None
    for what in ("server", "farm"):
        gone = env.backend(name="gone-" + what)
        gone.route("/hc", Reply(200, b"OK", delay=ANSWER_AFTER))
        before = make_config(farms=[web, farm("other", [server(gone.port)], healthCheck=check)], rules=rules)
        if fg is None:
            fg = env.farmgated(before)
        else:
            ok, line = fg.reload(before)
            assert ok, line
        n0 = len(gone.requests_to("/hc"))
        wait_for(lambda: len(gone.requests_to("/hc")) > n0, 3 * INTERVAL + 3 * env.slow,
                 msg="a probe of %s in flight" % gone.name)
        t_sent = time.monotonic()
        if what == "server":
            after = make_config(farms=[web, farm("other", [server(spare.port)], healthCheck=check)], rules=rules)
        else:
            after = make_config(farms=[web], rules=rules)
        ok, line = fg.reload(after)
        assert ok, line
        assert time.monotonic() - t_sent < ANSWER_AFTER - 0.2, \
            "the reload (%s removed) came too late to race the probe" % what
        time.sleep(max(0.0, ANSWER_AFTER - (time.monotonic() - t_sent)) + 0.5 * env.slow)  # the answer
        fg.assert_alive()
        n_gone, n_keep = len(gone.requests_to("/hc")), len(keep.requests_to("/hc"))
        time.sleep(2 * INTERVAL + 0.5)
        fg.assert_alive()
        assert len(gone.requests_to("/hc")) == n_gone, "the removed %s's server is still probed" % what
        assert len(keep.requests_to("/hc")) > n_keep, "the remaining server is no longer probed (%s)" % what
        r = get(fg, "/still")
        assert r.status == 200, "after the %s left: %s" % (what, r)


# --------------------------------------------------------------------------
# 4. live traffic: failures mark a server unhealthy; only the URL test brings it back
# --------------------------------------------------------------------------

def _to_server(fg, be_name, n_max=20, target="/live"):
    """Sends GETs until one is served by be_name; returns that response."""
    for i in range(n_max):
        r = get(fg, "%s?n=%d" % (target, i))
        if (r.header("X-Backend") or "") == be_name:
            return r
    raise AssertionError("no request reached %s in %d tries" % (be_name, n_max))


def test_live_traffic_failures_mark_unhealthy(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    for be in (a, b):
        be.route("/health", Reply(200, b"OK"))
    live = hc(retries=100, liveTrafficFailureCodes="500-", maxLiveTrafficFailures=3,
              liveTrafficFailurePeriod="00:00:30")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=live))
    wait_probed_ok(fg, [a.port, b.port])
    # 4xx are not in "500-": no live failure
    a.handler = Reply(404, b"nope", headers=[("X-Backend", "A")])
    for _ in range(2):
        assert _to_server(fg, "A").status == 404
    s = fg.server_status("web", a.port)
    assert is_healthy(s) and health_of(s).get("liveFailures") == 0, "404s are not live failures: %s" % s
    # the URL test now fails, but with retries 100 it cannot mark A unhealthy by itself
    a.route("/health", Reply(503, b"maintenance"))
    a.handler = Reply(500, b"boom", headers=[("X-Backend", "A")])
    mark = fg.log_mark()
    for n in (1, 2):
        r = _to_server(fg, "A")
        assert r.status == 500, "the backend's 500 goes to the client: %s" % r.summary()
        s = fg.server_status("web", a.port)
        assert is_healthy(s) and health_of(s).get("liveFailures") == n, \
            "after %d live 500s (max 3) A is still healthy with liveFailures %d: %s" % (n, n, s)
    r = _to_server(fg, "A")
    assert r.status == 500, r.summary()
    s = fg.server_status("web", a.port)
    assert is_unhealthy(s), "the 3rd live 500 within the period must mark A unhealthy at once: %s" % s
    downs = down_lines(fg, mark, a.port)
    assert len(downs) == 1 and re.search(r"live|traffic|500", downs[0], re.I), \
        "one transition line naming the live-traffic failures expected:\n%s" % (
            "\n".join(downs) or fg.new_log(mark)[-2000:])
    # the failing URL test keeps it out; live traffic cannot bring it back
    a.handler = None
    n_live = len(a.requests_not_to("/health"))
    n_probes = len(a.requests_to("/health"))
    for i in range(10):
        r = get(fg, "/out%d" % i)
        assert r.status == 200 and r.header("X-Backend") == "B", "A is unhealthy: %s" % r.summary()
    wait_for(lambda: len(a.requests_to("/health")) >= n_probes + 2, 3 * INTERVAL + 2 * env.slow,
             msg="two more (failing) probes of A")
    assert is_unhealthy(fg.server_status("web", a.port)), "only a good probe may bring A back"
    assert len(a.requests_not_to("/health")) == n_live, "live requests reached the unhealthy server"
    # a good probe brings it back
    mark_up = fg.log_mark()
    a.route("/health", Reply(200, b"OK"))
    fg.wait_server("web", a.port, probed_ok, timeout=INTERVAL + TIMEOUT + SLACK, msg="A healthy after a good probe")
    assert len(up_lines(fg, mark_up, a.port)) == 1, fg.new_log(mark_up)[-2000:]
    seen = {get(fg, "/back%d" % i).header("X-Backend") for i in range(6)}
    assert seen == {"A", "B"}, seen


def test_live_failures_expire_after_the_period(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    for be in (a, b):
        be.route("/health", Reply(200, b"OK"))
    live = hc(retries=100, maxLiveTrafficFailures=3, liveTrafficFailurePeriod="00:00:02")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=live))
    wait_probed_ok(fg, [a.port, b.port])
    a.route("/fail", Reply(502, b"bad gateway upstream", headers=[("X-Backend", "A")]))
    for _ in range(2):
        assert _to_server(fg, "A", target="/fail").status == 502
    assert health_of(fg.server_status("web", a.port)).get("liveFailures") == 2
    time.sleep(2.5)  # both failures are now older than the period
    for _ in range(2):
        assert _to_server(fg, "A", target="/fail").status == 502
    s = fg.server_status("web", a.port)
    assert is_healthy(s), "4 live failures, but never 3 within 2 s: A must stay healthy: %s" % s
    assert health_of(s).get("liveFailures") == 2, "only the failures within the period count: %s" % s
    assert _to_server(fg, "A", target="/fail").status == 502
    assert is_unhealthy(fg.server_status("web", a.port)), "3 failures within 2 s"


def test_live_connection_failures_count(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    live = hc(retries=100, liveTrafficFailureCodes="500-", maxLiveTrafficFailures=3,
              liveTrafficFailurePeriod="00:00:30")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, healthCheck=live))
    wait_probed_ok(fg, [a.port, b.port])
    a.stop()  # connections refused: live requests are retried on B, and each counts against A
    became = None
    for i in range(12):
        r = get(fg, "/c%d" % i)
        assert r.status == 200 and r.header("X-Backend") == "B", \
            "GET %d must be retried on B when A refuses: %s" % (i, r.summary())
        if is_unhealthy(fg.server_status("web", a.port)):
            became = i
            break
    assert became is not None, "3 refused live connections (of 12 round-robin GETs) must mark A unhealthy: %s" % (
        fg.server_status("web", a.port))
    assert became <= 7, "A became unhealthy only after %d GETs" % (became + 1)
    a.restart()
    fg.wait_server("web", a.port, probed_ok, timeout=INTERVAL + TIMEOUT + SLACK, msg="A healthy after restart")


# --------------------------------------------------------------------------
# 5. a POST that reached a backend is never retried
# --------------------------------------------------------------------------

def _aff_cookie_for(fg, want, tries=12):
    for i in range(tries):
        r = get(fg, "/who%d" % i)
        if r.header("X-Backend") == want:
            for v in r.header_all("Set-Cookie"):
                if v.startswith("ARRAffinity="):
                    return v.split(";", 1)[0]
    raise AssertionError("no ARRAffinity cookie for %s" % want)


def _post_outcome(fg, target, body, cookie, timeout=15):
    """'502', '200', ... or 'reset' / 'closed' when the client got no complete response."""
    try:
        r = http_request(fg.port, "POST", target, host=HOST, body=body, headers=[("Cookie", cookie)],
                         timeout=timeout)
        return str(r.status)
    except (ConnectionClosed, IncompleteResponse, ConnectionResetError) as e:
        return "reset" if "reset" in str(e).lower() or isinstance(e, ConnectionResetError) else "closed"


def test_post_reaching_backend_never_retried(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    a.route("/reset", Reply(raw=b"", abort="reset"))        # reads the whole request, then RST
    a.route("/die", Reply(raw=b"", abort="close", delay=1.0))  # dies while it works on it
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, affinity={"useCookie": True},
                                       healthCheck=hc()))
    wait_probed_ok(fg, [a.port, b.port])
    cookie = _aff_cookie_for(fg, "A")
    body = bytes(range(256)) * 256  # 64 KiB
    out = _post_outcome(fg, "/reset", body, cookie)
    assert out in ("502", "reset", "closed"), "a POST whose backend reset after reading it: %s" % out
    got = a.requests_to("/reset")
    assert len(got) == 1 and got[0].body_len == len(body), \
        "the backend must have read the POST exactly once (%d receipts)" % len(got)
    # the backend dies (closes without a byte) a second after it read the POST
    out = _post_outcome(fg, "/die", body, cookie)
    assert out in ("502", "reset", "closed"), "a POST whose backend died: %s" % out
    time.sleep(0.5)
    got = a.requests_to("/die")
    assert len(got) == 1 and got[0].body_len == len(body), "A read the POST %d times" % len(got)
    for path in ("/reset", "/die"):
        assert not b.requests_to(path), "the POST %s reached A and was retried on B" % path
    # A is now dead: the URL test takes it out and POSTs with its cookie go to B
    a.stop()
    fg.wait_server("web", a.port, is_unhealthy, timeout=INTERVAL * RETRIES + TIMEOUT + SLACK)
    r = http_request(fg.port, "POST", "/after", host=HOST, body=b"x", headers=[("Cookie", cookie)])
    assert r.status == 200 and r.header("X-Backend") == "B", r.summary()


# --------------------------------------------------------------------------
# 7. minServers
# --------------------------------------------------------------------------

def test_min_servers(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    for be in (a, b):
        be.route("/health", Reply(500, b"sick"))

    def cfg(min_servers):
        return one_farm_config([a.port, b.port], host=HOST, healthCheck=hc(minServers=min_servers))
    fg = env.farmgated(cfg(1))
    limit = INTERVAL * RETRIES + TIMEOUT + SLACK
    for be in (a, b):
        fg.wait_server("web", be.port, is_unhealthy, timeout=limit, msg="%s unhealthy" % be.name)
    seen = []
    for i in range(10):
        r = get(fg, "/m%d" % i)
        assert r.status == 200, "minServers 1 keeps one unhealthy server in rotation, got %s" % r.summary()
        seen.append(r.header("X-Backend"))
    assert len(set(seen)) == 1, "minServers 1 with both unhealthy: exactly one server in rotation, saw %s" % seen
    # health survives the reload; minServers 0: nothing in rotation
    ok, line = fg.reload(cfg(0))
    assert ok, line
    for p in (a.port, b.port):
        assert is_unhealthy(fg.server_status("web", p)), "health must survive a reload"
    for i in range(3):
        r = get(fg, "/z%d" % i)
        assert r.status == 503, "minServers 0 with every server unhealthy must answer 503: %s" % r.summary()
    # A recovers: it alone serves
    a.route("/health", Reply(200, b"OK"))
    fg.wait_server("web", a.port, probed_ok, timeout=INTERVAL + TIMEOUT + SLACK)
    assert {get(fg, "/r%d" % i).header("X-Backend") for i in range(6)} == {"A"}
    # minServers 2 with one healthy server: the unhealthy one is kept in rotation too
    ok, line = fg.reload(cfg(2))
    assert ok, line
    assert is_unhealthy(fg.server_status("web", b.port))
    assert {get(fg, "/two%d" % i).header("X-Backend") for i in range(8)} == {"A", "B"}, \
        "minServers 2: both servers in rotation"


# --------------------------------------------------------------------------
# 10. probes over HTTPS with the farm's token identity: no signatures in steady state
# --------------------------------------------------------------------------

def _probe_lines(ng):
    return [l for l in ng.access_lines() if '"GET /health ' in l]


def test_https_probes_add_no_token_signatures(env):
    from pki import Pki, SoftToken, TlsNginx
    iis = "Client-Cert-Mapping-IIS"
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    tok.use_shim()  # counts the signatures the module really makes
    cert = tok.client_cert(ca, "ec256", "appliance")
    crt, key = ca.server_cert("iis", ["DNS:" + iis])
    users = {cert.sha1: "appliance"}
    ka = TlsNginx(env, crt, key, client_ca=ca.crt, users=users, name="keepalive").start()
    noka = TlsNginx(env, crt, key, client_ca=ca.crt, users=users, name="nokeepalive", keepalive_timeout="0").start()

    def tls_farm(name, port):
        return {"name": name,
                "servers": [{"address": "127.0.0.1", "httpsPort": port, "hostName": iis}],
                "protocol": {"preserveHostHeader": False, "clientCertHash": cert.sha1, "backendCaFile": ca.crt},
                "healthCheck": hc(url="https://%s/health" % iis, interval="00:00:00.500",
                                  responseMatch="user=appliance")}
    cfg = make_config(farms=[tls_farm("ka", ka.port), tls_farm("noka", noka.port)], rules=[],
                      tokens=[tok.token_cfg()])
    fg = env.farmgated(cfg)
    pid = fg.pid
    for farm_name, ng in (("ka", ka), ("noka", noka)):
        wait_for(lambda: len(_probe_lines(ng)) >= 3, 10 * env.slow, msg="3 probes at %s" % ng.name)
        servers = fg.farm_status(farm_name).get("servers") or []
        assert len(servers) == 1, servers
        s = servers[0]
        assert probed_ok(s) and health_of(s).get("lastStatus") == 200, \
            "farm %s: probes with the token's client certificate must succeed (responseMatch user=appliance): %s" % (
                farm_name, s)
    warm = tok.settled_stats(pid, quiet=0.5, timeout=6.0).get("signatures", 0)
    assert warm >= 1, "the probes' handshakes were not signed on the token (shim counted %d)" % warm
    base = {ng.name: len(_probe_lines(ng)) for ng in (ka, noka)}
    for ng in (ka, noka):
        wait_for(lambda: len(_probe_lines(ng)) >= base[ng.name] + 8, 8 * env.slow,
                 msg="8 more probes at %s" % ng.name)
    after = tok.settled_stats(pid, quiet=0.5, timeout=6.0).get("signatures", 0)
    assert after == warm, "%d steady-state probes made %d token signatures (want 0)" % (
        sum(len(_probe_lines(ng)) - base[ng.name] for ng in (ka, noka)), after - warm)
    conns = {re.search(r"conn=(\d+)", l).group(1) for l in _probe_lines(ka)}
    assert len(conns) == 1, "probes to a keep-alive backend must reuse one connection, used %d" % len(conns)
    resumed = [l for l in _probe_lines(noka)[3:] if "reused=r" not in l]
    assert not resumed, "probes on new connections must resume the TLS session:\n%s" % "\n".join(resumed[:3])
    # verify over HTTPS
    ans = fg.control_ok({"op": "verify", "farm": "ka"}, timeout=20)
    assert [(r.get("result"), r.get("status")) for r in ans.get("results", [])] == [("Success", 200)], ans
    mark = fg.log_mark()
    fg.stop()
    text = fg.new_log(mark)
    m = re.search(r"token token1: (\d+) signatures", text)
    assert m, "no 'token token1: N signatures' line at exit:\n%s" % text[-2000:]
    farms = {x.group(1): int(x.group(2)) for x in re.finditer(r"farm (\S+): (\d+) token signatures", text)}
    assert farms.get("ka") == 1, "farm ka (keep-alive): one handshake in all, got %s" % farms
    assert int(m.group(1)) == tok.settled_stats(pid, quiet=0.5, timeout=6.0).get("signatures", 0), (m.group(0), tok.stats(pid))
