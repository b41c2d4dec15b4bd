"""Gaps: connect timeout (+ retry on the next server), LeastResponseTime,
WeightedTotalTraffic, access log to syslog, IPv6 listener and backend."""

import collections
import errno
import os
import select
import socket
import threading
import time

import harness
from harness import (Farmgated, http_request, one_farm_config, RawClient,
                     RecordingBackend, Reply, server, wait_port)


# --------------------------------------------------------------------------
# a loopback server whose connect() never completes
# --------------------------------------------------------------------------

def _nb_connect(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    rc = s.connect_ex((host, port))
    assert rc in (0, errno.EINPROGRESS), "connect_ex to %s:%d: %s" % (host, port, os.strerror(rc))
    return s


def _connect_completes(s, within):
    """True if the non-blocking connect on s completed (either way) within `within` s."""
    _, w, _ = select.select([], [s], [], within)
    return bool(w)


def _black_hole_listener(env):
    """A listening socket with listen(0) that never accepts, its accept queue
    filled by plain client connections kept open: further SYNs are dropped
    and a connect() to it hangs. Returns its port; everything is closed at
    env.close()."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = [_nb_connect(port) for _ in range(3)]
    time.sleep(0.2)  # let the first handshake(s) land in the accept queue

    def close_all():
        for s in fillers + [ls]:
            try:
                s.close()
            except OSError:
                pass
    env.on_cleanup(close_all)

    # skip-proofing: the black hole must really hold a connect for > 1 s
    probe = _nb_connect(port)
    try:
        t0 = time.monotonic()
        done = _connect_completes(probe, 1.0)
        assert not done, (
            "test setup broken: a non-blocking connect to the full listen(0) socket on "
            "127.0.0.1:%d completed after %.2fs (SO_ERROR=%d); the kernel did not drop the "
            "SYN, so this machine cannot emulate a connect timeout this way"
            % (port, time.monotonic() - t0, probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    finally:
        probe.close()
    return port


def _error_lines(fg, since):
    return [l for l in fg.new_log(since).splitlines() if l.strip() and "access:" not in l]


def test_connect_timeout_then_next_server(env):
    hole = _black_hole_listener(env)
    live = env.backend(name="LIVE")
    # equal weights: WRR picks the first server first on a tie
    fg = env.farmgated(one_farm_config([server(hole), server(live.port)],
                                       loadBalancing={"algorithm": "WeightedRoundRobin"},
                                       config={"timeouts": {"connect": 1}}))
    upper = 5.0 if env.release else 8.0
    mark = fg.log_mark()
    t0 = time.monotonic()
    r = http_request(fg.port, "GET", "/ct1", host="web.local", timeout=20)
    dt = time.monotonic() - t0
    assert r.status == 200 and r.header("X-Backend") == "LIVE", \
        "GET must be retried on the healthy server after the connect timeout: %s" % r.summary()
    assert 0.9 <= dt < upper, \
        "the first request (black-holed server first) took %.2fs; expected about the 1s connect timeout" % dt
    assert live.count == 1, live.count
    errs = _error_lines(fg, mark)
    assert any("connect timeout" in l.lower() and str(hole) in l for l in errs), \
        "the error log must mention the connect timeout of 127.0.0.1:%d; got:\n%s" % (hole, "\n".join(errs[-10:]))

    # only the black-holed server: 504 after about 1 s
    hole2 = _black_hole_listener(env)
    fg2 = env.farmgated(one_farm_config([server(hole2)], config={"timeouts": {"connect": "00:00:01"}}))
    mark = fg2.log_mark()
    t0 = time.monotonic()
    r = http_request(fg2.port, "GET", "/ct2", host="web.local", timeout=20)
    dt = time.monotonic() - t0
    assert r.status == 504, "the only server never completes its connect: expected 504, got %s" % r.summary()
    assert 0.9 <= dt < upper, "504 came after %.2fs; timeouts.connect is 1s" % dt
    acc = harness.wait_for(lambda: fg2.access_lines(mark), timeout=5, msg="an access log line")
    assert any('"GET /ct2 HTTP/1.1" 504' in l and "reason=backend connect timeout" in l for l in acc), \
        "access log must show the 504 with reason=backend connect timeout; got:\n%s" % "\n".join(acc)


# --------------------------------------------------------------------------
# load-balancing algorithms
# --------------------------------------------------------------------------

def test_least_response_time_prefers_fast_server(env):
    slow = env.backend(Reply(200, b"slow", headers=[("X-Backend", "SLOW")], delay=0.15), name="SLOW")
    fast = env.backend(name="FAST")
    fg = env.farmgated(one_farm_config([slow.port, fast.port],
                                       loadBalancing={"algorithm": "LeastResponseTime",
                                                      "leastResponseTimePeriod": "00:00:01"}))
    seq = []
    t_end = time.monotonic() + 4.0
    i = 0
    while time.monotonic() < t_end or len(seq) < 40:
        r = http_request(fg.port, "GET", "/lrt%d" % i, host="web.local")
        assert r.status == 200, "request %d: %s" % (i, r.summary())
        seq.append(r.header("X-Backend"))
        i += 1
        time.sleep(0.02)  # paced: ~4 s spans several 1 s windows
    last = collections.Counter(seq[-30:])
    assert len(seq) >= 40 and last["FAST"] > 0.75 * 30, \
        "LeastResponseTime (period 1s, SLOW answers after 150 ms) must prefer FAST; last 30 of %d " \
        "requests: %s; all: %s" % (len(seq), dict(last), dict(collections.Counter(seq)))


def test_weighted_total_traffic_balances_bytes(env):
    big = env.backend(Reply(200, b"B" * 100000, headers=[("X-Backend", "BIG")]), name="BIG")
    small = env.backend(Reply(200, b"s" * 1000, headers=[("X-Backend", "SMALL")]), name="SMALL")
    fg = env.farmgated(one_farm_config([big.port, small.port],
                                       loadBalancing={"algorithm": "WeightedTotalTraffic"}))
    seq = []
    for i in range(60):
        r = http_request(fg.port, "GET", "/wtt%d" % i, host="web.local")
        assert r.status == 200, "request %d: %s" % (i, r.summary())
        exp = 100000 if r.header("X-Backend") == "BIG" else 1000
        assert len(r.body) == exp, r.summary(100)
        seq.append(r.header("X-Backend"))
    c = collections.Counter(seq)
    assert c["SMALL"] >= 50 and c["SMALL"] >= 10 * max(1, c["BIG"]), \
        "WeightedTotalTraffic must send most requests to the server moving 1 KB per response " \
        "(the other moves 100 KB): %s; order: %s" % (dict(c), "".join(x[0] for x in seq))
    assert big.count == c["BIG"] and small.count == c["SMALL"], (big.count, small.count, dict(c))


# --------------------------------------------------------------------------
# syslog
# --------------------------------------------------------------------------

def test_access_log_to_syslog(env):
    path = "/dev/log"
    assert not os.path.lexists(path), \
        "%s already exists (a syslog daemon or another test?): refusing to replace it" % path
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sk.bind(path)
    except OSError as e:
        sk.close()
        raise AssertionError("cannot bind a datagram socket at %s: %s" % (path, e))

    def cleanup():
        sk.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    env.on_cleanup(cleanup)
    os.chmod(path, 0o666)

    be = env.backend(name="B")
    fg = env.farmgated(one_farm_config([be.port], config={"log": {"access": "syslog", "error": "stderr"}}))
    c = RawClient(fg.port)
    client_port = c.local_port
    with c:
        c.request("GET", "/sys/log?q=1", host="web.local", headers=[("Connection", "close")])
        r = c.read_response()
    assert r.status == 200, r.summary()

    reqline = "GET /sys/log?q=1 HTTP/1.1"
    got = []
    deadline = time.monotonic() + 5 * env.slow
    while time.monotonic() < deadline:
        rd, _, _ = select.select([sk], [], [], 0.2)
        if rd:
            got.append(sk.recv(65536).decode("utf-8", "replace"))
            if any(reqline in g for g in got):
                break
    match = [g for g in got if reqline in g]
    assert match, "no syslog datagram with %r within 5s; datagrams received: %r" % (reqline, got)
    assert "farmgated" in match[0], "syslog datagram without the ident 'farmgated': %r" % match[0]
    assert ":%d" % client_port in match[0], \
        "syslog access line without the client port %d: %r" % (client_port, match[0])
    time.sleep(0.2)
    log = fg.log_text()
    assert reqline not in log and "access:" not in log, \
        "with log.access=syslog the access line must not go to stderr; farmgated's stderr:\n%s" % log[-2000:]


# --------------------------------------------------------------------------
# IPv6
# --------------------------------------------------------------------------

class _Backend6(RecordingBackend):
    """RecordingBackend listening on [::1] (the harness one binds AF_INET)."""

    def start(self):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1", 0))
        s.listen(256)
        s.settimeout(0.2)
        self._lsock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="be6-accept-%s" % self.name, daemon=True)
        t.start()
        self._threads.append(t)
        return self


class _Farmgated6(Farmgated):
    """Farmgated whose start() waits for its listeners on their configured
    address (the harness waits on 127.0.0.1 only)."""

    def start(self):
        orig = harness.wait_port

        def wait6(port, host="127.0.0.1", timeout=10.0, alive=None):
            addrs = [l.get("address") for l in json_listeners(self) if l.get("port") == port]
            h = addrs[0] if addrs and addrs[0] else host
            return orig(port, h, timeout, alive)
        harness.wait_port = wait6
        try:
            return super().start()
        finally:
            harness.wait_port = orig


def json_listeners(fg):
    import json
    try:
        with open(fg.config_path) as f:
            return json.load(f).get("listeners", [])
    except (OSError, ValueError):
        return []


def test_ipv6_listener_and_backend(env):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.bind(("::1", 0))
    except OSError as e:
        raise AssertionError("this machine has no usable ::1 (bind failed: %s); IPv6 cannot be tested" % e)
    finally:
        s.close()

    be = _Backend6(name="V6")
    be.start()
    env.on_cleanup(be.stop)
    cfg = one_farm_config([server(be.port, address="::1")])
    cfg["listeners"] = [{"address": "::1", "port": None}]
    fg = _Farmgated6(env, cfg)
    fg.start()
    assert wait_port(fg.port, "::1", timeout=5), "farmgated does not accept on [::1]:%d" % fg.port

    with RawClient(fg.port, host="::1") as c:
        client_port = c.local_port
        c.request("GET", "/six?x=6", host="web.local", headers=[("Connection", "close")])
        r = c.read_response()
    assert r.status == 200 and r.header("X-Backend") == "V6", \
        "request over [::1] listener to a [::1] backend: %s\nlog:\n%s" % (r.summary(), fg.log_text()[-2000:])
    assert be.count == 1, be.count
    req = be.requests[0]
    assert req.target == "/six?x=6", req
    assert req.client[0] == "::1", "backend connection came from %r, expected ::1" % (req.client,)
    xff = req.header("X-Forwarded-For")
    assert xff == "[::1]:%d" % client_port, \
        "X-Forwarded-For for an IPv6 client must be [::1]:<client port> = [::1]:%d, got %r\nhead: %r" % (
            client_port, xff, req.head)
    # the access line is written once the response is out: the client can read the response first
    harness.wait_for(lambda: [l for l in fg.access_lines() if "/six?x=6" in l], timeout=5,
                     msg="an access line for the IPv6 request")
