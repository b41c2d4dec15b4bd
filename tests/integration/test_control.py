"""The control socket and farmgatectl (issue 5, docs/control.md): server states (Available,
DisallowNewConnections, UnavailableGracefully, UnavailableImmediately), farm online/offline,
SetHealthy/SetUnhealthy, states surviving reloads, counters and reset, WebSocket counters, and
the socket's security (mode 0600, root-only peers, bad requests, a live daemon's socket not
stolen). Real backends: the harness's RecordingBackend.
"""

import ast
import base64
import json
import os
import socket
import stat
import subprocess
import threading
import time

from harness import (ConnectionClosed, control_raw, control_request, free_port,
                     http_request, IncompleteResponse, make_config, arr_lb_rule, farm, one_farm_config, RawClient,
                     Reply, server, wait_for)

HOST = "web.local"


def sname(port):
    return "127.0.0.1:%d" % port


def subject(ans, key="server"):
    """The object an answer describes the server/farm in (answer[key] or the answer)."""
    v = ans.get(key)
    return v if isinstance(v, dict) else ans


def get(fg, target="/", host=HOST, cookie=None, timeout=10):
    hs = [("Cookie", cookie)] if cookie else []
    return http_request(fg.port, "GET", target, host=host, headers=hs, timeout=timeout)


def backends_of(fg, n, prefix="/n", cookie=None):
    return [get(fg, "%s%d" % (prefix, i), cookie=cookie).header("X-Backend") for i in range(n)]


def aff_cookie(fg, want, tries=12):
    """'ARRAffinity=<v>' for backend want."""
    for i in range(tries):
        r = get(fg, "/who%d" % i)
        assert r.status == 200, r.summary()
        if r.header("X-Backend") == want:
            for v in r.header_all("Set-Cookie"):
                if v.startswith("ARRAffinity="):
                    return v.split(";", 1)[0]
    raise AssertionError("no ARRAffinity cookie for %s in %d requests" % (want, tries))


def set_state(fg, port, state, farm_name="web"):
    ans = fg.control({"op": "server", "farm": farm_name, "server": sname(port), "state": state})
    assert ans.get("ok") is True, "server %s -> %s refused: %s" % (sname(port), state, ans)
    assert subject(ans).get("state") == state, "the answer must show the new state %s: %s" % (state, ans)
    assert fg.server_status(farm_name, port).get("state") == state
    return ans


def ctl_ok(fg, *args):
    p = fg.ctl(*args)
    assert p.returncode == 0, "`%s` exited %d:\n%s" % (p.cmd, p.returncode, p.output)
    return p


def two_backends(env, **farm_kw):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(one_farm_config([a.port, b.port], host=HOST, **farm_kw))
    return a, b, fg


# --------------------------------------------------------------------------
# 6. server states
# --------------------------------------------------------------------------

def test_drain_keeps_affinitized_clients(env):
    a, b, fg = two_backends(env, affinity={"useCookie": True})
    ca = aff_cookie(fg, "A")
    cb = aff_cookie(fg, "B")
    p = ctl_ok(fg, "server", "web", sname(a.port), "drain")
    assert "DisallowNewConnections" in p.stdout, "farmgatectl should confirm the new state: %s" % p.stdout
    assert fg.server_status("web", a.port).get("state") == "DisallowNewConnections"
    n_a = len(a.requests)
    assert set(backends_of(fg, 10)) == {"B"}, "drain: new clients must not reach A"
    assert len(a.requests) == n_a
    for i in range(5):
        r = get(fg, "/aff%d" % i, cookie=ca)
        assert r.status == 200 and r.header("X-Backend") == "A", \
            "drain: a client with A's affinity cookie still reaches A: %s" % r.summary()
        r = get(fg, "/bff%d" % i, cookie=cb)
        assert r.header("X-Backend") == "B", r.summary()
    # the status table says so too
    p = ctl_ok(fg, "status", "web")
    row = [l for l in p.stdout.splitlines() if sname(a.port) in l]
    assert row and "DisallowNewConnections" in row[0], p.stdout
    # Available: back in rotation
    set_state(fg, a.port, "Available")
    assert set(backends_of(fg, 6)) == {"A", "B"}


def _slow_get(fg, target, cookie, out):
    t0 = time.monotonic()
    try:
        r = get(fg, target, cookie=cookie, timeout=15)
        out["status"], out["body"], out["complete"] = r.status, r.body, r.complete
    except (ConnectionClosed, IncompleteResponse, OSError) as e:
        out["status"], out["error"] = None, "%s: %s" % (type(e).__name__, e)
    out["secs"] = time.monotonic() - t0


def test_unavailable_gracefully_finishes_in_flight(env):
    a, b, fg = two_backends(env, affinity={"useCookie": True})
    a.route("/slow", Reply(200, b"slow-done", headers=[("X-Backend", "A")], delay=2))
    ca = aff_cookie(fg, "A")
    out = {}
    t = threading.Thread(target=_slow_get, args=(fg, "/slow", ca, out), daemon=True)
    t.start()
    wait_for(lambda: a.requests_to("/slow"), 5, msg="the slow request at A")
    p = ctl_ok(fg, "server", "web", sname(a.port), "stop-graceful")
    assert "UnavailableGracefully" in p.stdout, p.stdout
    s = fg.server_status("web", a.port)
    assert s.get("state") == "UnavailableGracefully" and (s.get("counters") or {}).get("currentRequests") == 1, \
        "the in-flight request is still counted on A: %s" % s
    n_a = len(a.requests)
    assert set(backends_of(fg, 8)) == {"B"}, "UnavailableGracefully: no new requests to A"
    r = get(fg, "/withcookie", cookie=ca)
    assert r.status == 200 and r.header("X-Backend") == "B", \
        "UnavailableGracefully: even A's affinity cookie goes elsewhere: %s" % r.summary()
    assert len(a.requests) == n_a
    t.join(10)
    assert out.get("status") == 200 and out.get("body") == b"slow-done" and out.get("complete"), \
        "the in-flight request must finish normally: %s" % out
    assert out["secs"] >= 1.8
    assert (fg.server_status("web", a.port).get("counters") or {}).get("currentRequests") == 0
    set_state(fg, a.port, "Available")
    assert set(backends_of(fg, 6)) == {"A", "B"}


def test_unavailable_immediately_aborts_in_flight(env):
    a, b, fg = two_backends(env, affinity={"useCookie": True})
    a.route("/slow", Reply(200, b"never", headers=[("X-Backend", "A")], delay=4))
    a.route("/slowbody", Reply(200, b"y" * 100000, headers=[("X-Backend", "A")], body_delay=4))
    ca = aff_cookie(fg, "A")
    # (a) no response byte yet: the client gets 502
    out = {}
    t = threading.Thread(target=_slow_get, args=(fg, "/slow", ca, out), daemon=True)
    t.start()
    wait_for(lambda: a.requests_to("/slow"), 5, msg="the slow request at A")
    conn = a.requests_to("/slow")[0].conn_id
    t0 = time.monotonic()
    p = ctl_ok(fg, "server", "web", sname(a.port), "stop-immediate")
    assert "UnavailableImmediately" in p.stdout, p.stdout
    t.join(10)
    assert out.get("status") == 502 or (out.get("status") is None and out.get("error")), \
        "UnavailableImmediately: the in-flight request is aborted (502 or reset): %s" % out
    assert time.monotonic() - t0 < 2.0 * env.slow, "the abort took %.1fs (the backend answers after 4 s)" % (
        time.monotonic() - t0)
    wait_for(lambda: a.connection_gone(conn), 2 * env.slow, msg="farmgated to close its connection to A")
    assert set(backends_of(fg, 6)) == {"B"}
    # (b) the response had started: the client connection is reset / cut short
    set_state(fg, a.port, "Available")
    with RawClient(fg.port, timeout=10) as c:
        c.request("GET", "/slowbody", host=HOST, headers=[("Cookie", ca)])
        c._fill(5)  # the head arrives, the body is 4 s away
        assert bytes(c.buf).startswith(b"HTTP/1.1 200"), bytes(c.buf[:200])
        conn = a.requests_to("/slowbody")[0].conn_id
        t0 = time.monotonic()
        set_state(fg, a.port, "UnavailableImmediately")
        assert c.wait_closed(2 * env.slow), "the client connection must be closed when A is made unavailable"
        data = bytes(c.buf)
    assert b"y" * 100000 not in data, "the aborted response must not look complete"
    wait_for(lambda: a.connection_gone(conn), 2 * env.slow, msg="farmgated to close its connection to A")
    set_state(fg, a.port, "Available")
    assert set(backends_of(fg, 6)) == {"A", "B"}


def test_states_and_health_survive_reload(env):
    names = ["A", "B", "C", "D", "E"]
    bes = {n: env.backend(name=n) for n in names}
    ports = [bes[n].port for n in names]

    def cfg(extra=(), weight_e=100, timeout="00:00:30"):
        srvs = [server(bes[n].port) for n in ("A", "B", "C", "D")] + [server(bes["E"].port, weight=weight_e)]
        srvs += list(extra)
        return one_farm_config(srvs, host=HOST, protocol={"timeout": timeout})
    fg = env.farmgated(cfg())
    set_state(fg, ports[0], "DisallowNewConnections")
    set_state(fg, ports[1], "UnavailableGracefully")
    set_state(fg, ports[2], "UnavailableImmediately")
    ans = fg.control({"op": "health", "farm": "web", "server": sname(ports[3]), "healthy": False})
    assert ans.get("ok") is True, ans
    assert fg.server_status("web", ports[3]).get("healthy") is False
    assert set(backends_of(fg, 6)) == {"E"}
    # reload with edits: E's weight, a new server F, another timeout
    f = env.backend(name="F")
    ok, line = fg.reload(cfg(extra=[server(f.port)], weight_e=50, timeout="00:00:20"))
    assert ok, line
    want = {ports[0]: ("DisallowNewConnections", True), ports[1]: ("UnavailableGracefully", True),
            ports[2]: ("UnavailableImmediately", True), ports[3]: ("Available", False),
            ports[4]: ("Available", True), f.port: ("Available", True)}
    for p, (state, healthy) in want.items():
        s = fg.server_status("web", p)
        assert s.get("state") == state and s.get("healthy") is healthy, \
            "after a reload %s must still be %s/%s: %s" % (sname(p), state, "healthy" if healthy else "unhealthy", s)
    assert fg.server_status("web", ports[4]).get("weight") == 50
    assert set(backends_of(fg, 9)) == {"E", "F"}
    # farm offline survives a reload too
    ans = fg.control({"op": "farm", "farm": "web", "state": "Offline"})
    assert ans.get("ok") is True, ans
    assert get(fg, "/off").status == 503
    ok, line = fg.reload(cfg(extra=[server(f.port)], weight_e=60))
    assert ok, line
    assert fg.farm_status("web").get("state") == "Offline"
    assert get(fg, "/off2").status == 503, "an offline farm stays offline across a reload"
    ctl_ok(fg, "farm", "web", "online")
    ctl_ok(fg, "health", "web", sname(ports[3]), "healthy")
    assert fg.server_status("web", ports[3]).get("healthy") is True
    assert set(backends_of(fg, 12)) == {"D", "E", "F"}


def test_farm_offline_and_online(env):
    a = env.backend(name="A")
    o = env.backend(name="O")
    cfg = make_config(farms=[farm("web", [server(a.port)]), farm("other", [server(o.port)])],
                      rules=[arr_lb_rule("web", HOST), arr_lb_rule("other", "other.local")])
    fg = env.farmgated(cfg)
    p = ctl_ok(fg, "farm", "web", "offline")
    assert "Offline" in p.stdout, p.stdout
    f = fg.farm_status("web")
    assert f.get("state") == "Offline" and f.get("enabled") is True, f
    n = len(a.requests)
    for i in range(3):
        r = get(fg, "/x%d" % i)
        assert r.status == 503, "an offline farm answers 503: %s" % r.summary()
    assert len(a.requests) == n, "an offline farm sends nothing to its servers"
    r = get(fg, "/", host="other.local")
    assert r.status == 200 and r.header("X-Backend") == "O", "other farms are not affected: %s" % r.summary()
    ans = fg.control({"op": "farm", "farm": "web", "state": "Online"})
    assert ans.get("ok") is True, ans
    assert get(fg, "/back").status == 200
    assert fg.farm_status("web").get("state") == "Online"


# --------------------------------------------------------------------------
# 8. counters
# --------------------------------------------------------------------------

COUNTER_KEYS = ("currentRequests", "totalRequests", "failedRequests", "requestsPerSecond", "bytesSent",
                "bytesReceived", "responseTimeMs", "webSocketCurrent", "webSocketTotal")


def counters(obj):
    c = obj.get("counters")
    assert isinstance(c, dict), "no counters object: %s" % obj
    missing = [k for k in COUNTER_KEYS if not isinstance(c.get(k), (int, float))]
    assert not missing, "counters without %s: %s" % (missing, c)
    return c


def test_counters_match_what_clients_saw(env):
    a = env.backend(Reply(200, b"a" * 1000, headers=[("X-Backend", "A")]), name="A")
    b = env.backend(Reply(200, b"b" * 1000, headers=[("X-Backend", "B")]), name="B")
    for be in (a, b):
        be.route("/err", Reply(500, b"err", headers=[("X-Backend", be.name)]))
    slow = env.backend(Reply(200, b"slow", delay=1.5), name="S")
    dead = free_port()
    cfg = make_config(farms=[farm("web", [server(a.port), server(b.port)]), farm("dead", [server(dead)]),
                             farm("slow", [server(slow.port)])],
                      rules=[arr_lb_rule("web", HOST), arr_lb_rule("dead", "dead.local"),
                             arr_lb_rule("slow", "slow.local")])
    fg = env.farmgated(cfg)
    statuses = []
    with RawClient(fg.port, timeout=10) as c:
        for i in range(10):
            c.request("GET", "/ok%d" % i, host=HOST)
            statuses.append(c.read_response().status)
        for i in range(4):
            c.request("GET", "/err", host=HOST)
            statuses.append(c.read_response().status)
        for i in range(3):
            c.request("POST", "/up%d" % i, host=HOST, body=b"p" * 5000)
            statuses.append(c.read_response().status)
    assert statuses == [200] * 10 + [500] * 4 + [200] * 3, statuses
    for i in range(3):
        assert get(fg, "/d%d" % i, host="dead.local").status == 502
    f = fg.farm_status("web")
    fc = counters(f)
    assert fc["totalRequests"] == 17 and fc["failedRequests"] == 4 and fc["currentRequests"] == 0, \
        "web farm: 17 requests, 4 answered 500: %s" % fc
    sent_body, recv_body = 3 * 5000, 13 * 1000 + 4 * 3
    assert sent_body <= fc["bytesSent"] <= sent_body + 17 * 600, \
        "bytesSent (to the servers) %d for %d body bytes in 17 requests" % (fc["bytesSent"], sent_body)
    assert recv_body <= fc["bytesReceived"] <= recv_body + 17 * 400, \
        "bytesReceived (from the servers) %d for %d body bytes in 17 responses" % (fc["bytesReceived"], recv_body)
    total = 0
    for be in (a, b):
        sc = counters(fg.server_status("web", be.port))
        assert sc["totalRequests"] == len(be.requests), \
            "server %s counted %d requests, it received %d" % (be.name, sc["totalRequests"], len(be.requests))
        assert sc["failedRequests"] == len(be.requests_to("/err")), (be.name, sc)
        assert sc["currentRequests"] == 0
        total += sc["totalRequests"]
    assert total == 17
    dc = counters(fg.farm_status("dead"))
    assert dc["totalRequests"] == 3 and dc["failedRequests"] == 3, "3 502s from a dead server: %s" % dc
    # an in-flight request is current
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", get(fg, "/s", host="slow.local")), daemon=True)
    t.start()
    slow.wait_requests(1, 5)
    s = fg.server_status("slow", slow.port)
    assert counters(s)["currentRequests"] == 1 and counters(fg.farm_status("slow"))["currentRequests"] == 1, s
    t.join(10)
    assert out["r"].status == 200
    sc = counters(fg.server_status("slow", slow.port))
    assert sc["currentRequests"] == 0 and sc["totalRequests"] == 1 and sc["responseTimeMs"] >= 1000, \
        "one request of 1.5 s: %s" % sc
    # the CLI shows the same numbers
    p = ctl_ok(fg, "status", "web", "--json")
    farms = json.loads(p.stdout).get("farms")
    assert [x.get("name") for x in farms] == ["web"] and counters(farms[0])["totalRequests"] == 17, p.stdout
    p = ctl_ok(fg, "status")
    for name in ("web", "dead", "slow"):
        assert "farm %s" % name in p.stdout, p.stdout
    # reset: one server, then the farm
    sa_before = counters(fg.server_status("web", a.port))
    sb_before = counters(fg.server_status("web", b.port))
    ans = fg.control({"op": "reset", "farm": "web", "server": sname(a.port)})
    assert ans.get("ok") is True, ans
    sa = counters(fg.server_status("web", a.port))
    assert sa["totalRequests"] == 0 and sa["failedRequests"] == 0 and sa["bytesSent"] == 0 \
        and sa["bytesReceived"] == 0, "reset of server A: %s (was %s)" % (sa, sa_before)
    assert counters(fg.server_status("web", b.port))["totalRequests"] == sb_before["totalRequests"], \
        "resetting A must not touch B"
    ctl_ok(fg, "farm", "web", "reset")
    for obj in [fg.farm_status("web")] + [fg.server_status("web", be.port) for be in (a, b)]:
        c = counters(obj)
        assert c["totalRequests"] == 0 and c["failedRequests"] == 0 and c["bytesSent"] == 0 \
            and c["bytesReceived"] == 0, "after reset: %s" % c
    assert counters(fg.farm_status("dead"))["totalRequests"] == 3, "reset of web must not touch farm dead"
    for i in range(2):
        assert get(fg, "/again%d" % i).status == 200
    assert counters(fg.farm_status("web"))["totalRequests"] == 2


def test_websocket_counters(env):
    w = env.backend(Reply(websocket=True), name="W")
    fg = env.farmgated(one_farm_config([w.port], host=HOST))
    key = base64.b64encode(os.urandom(16)).decode()
    with RawClient(fg.port, timeout=10) as c:
        c.request("GET", "/ws", host=HOST, headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                     ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
        r = c.read_response()
        assert r.status == 101, r.summary()
        c.send(b"hello through the tunnel")
        assert c.read_exactly(24) == b"hello through the tunnel"
        fc = counters(fg.farm_status("web"))
        sc = counters(fg.server_status("web", w.port))
        assert fc["webSocketCurrent"] == 1 and fc["webSocketTotal"] == 1, "an open tunnel: %s" % fc
        assert sc["webSocketCurrent"] == 1 and sc["webSocketTotal"] == 1, sc
    wait_for(lambda: counters(fg.farm_status("web"))["webSocketCurrent"] == 0, 5 * env.slow,
             msg="webSocketCurrent back to 0 after the client closed")
    sc = counters(fg.server_status("web", w.port))
    assert sc["webSocketTotal"] == 1 and sc["webSocketCurrent"] == 0, sc


# --------------------------------------------------------------------------
# 9. the control socket itself
# --------------------------------------------------------------------------

NOBODY_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT-FAILED %s" % e.__class__.__name__)
    sys.exit(0)
out = b""
try:
    s.sendall(b'{"op":"status"}\n')
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
except OSError as e:
    print("IO-ERROR %s %r" % (e.__class__.__name__, out[:500]))
    sys.exit(0)
print("ANSWER %r" % out[:2000])
"""


def _as_nobody(path):
    p = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/usr/bin/python3", "-c", NOBODY_CLIENT, path],
                       capture_output=True, timeout=20, cwd="/")
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace").strip()


def test_control_socket_is_root_only(env):
    a = env.backend(name="A")
    fg = env.farmgated(one_farm_config([a.port], host=HOST))
    path = fg.control_socket
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode), "%s is not a socket" % path
    assert stat.S_IMODE(st.st_mode) == 0o600, "the control socket must be mode 0600, is %o" % stat.S_IMODE(st.st_mode)
    assert st.st_uid == 0, "the control socket must belong to root (uid %d)" % st.st_uid
    assert fg.control({"op": "status"}).get("ok") is True
    # nobody cannot connect through the file mode ...
    rc, out = _as_nobody(path)
    assert rc == 0 and out.startswith("CONNECT-FAILED"), "nobody must not connect to a 0600 socket: %s" % out
    p = fg.ctl("status", user="nobody")
    assert p.returncode == 1 and "web" not in p.stdout, \
        "farmgatectl run by nobody must fail with exit 1: %d\n%s" % (p.returncode, p.output)
    # ... and the daemon refuses a non-root peer even if the mode is opened up
    os.chmod(path, 0o666)
    try:
        rc, out = _as_nobody(path)
    finally:
        os.chmod(path, 0o600)
    assert rc == 0 and not out.startswith("CONNECT-FAILED"), "connect must succeed with mode 0666: %s" % out
    assert "farms" not in out and "127.0.0.1" not in out, "a non-root peer got an answer: %s" % out
    if out.startswith("ANSWER") and out != "ANSWER b''":
        ans = json.loads(ast.literal_eval(out[len("ANSWER "):]).decode())
        assert ans.get("ok") is False and ans.get("error"), "a non-root peer must be refused: %s" % ans
    assert fg.control({"op": "status"}).get("ok") is True


def test_control_bad_requests(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(make_config(farms=[farm("web", [server(a.port)]), farm("two", [server(a.port), server(b.port)])],
                                   rules=[arr_lb_rule("web", HOST), arr_lb_rule("two", "two.local")]))
    srv = sname(a.port)
    # a bare address names the only server of the farm that has it ...
    ans = fg.control({"op": "server", "farm": "web", "server": "127.0.0.1", "state": "DisallowNewConnections"})
    assert ans.get("ok") is True and subject(ans).get("server") == srv, ans
    assert fg.control({"op": "server", "farm": "web", "server": srv, "state": "Available"}).get("ok") is True
    cases = [
        # ... and is refused when two servers of the farm have it
        ({"op": "server", "farm": "two", "server": "127.0.0.1", "state": "Available"},
         ("ambiguous", "more than one", "127.0.0.1:", "several", "two servers")),
        ({"op": "frobnicate"}, ("frobnicate", "op")),
        ("{not json", ("json",)),
        ("[1,2,3]", ("object", "json", "op")),
        ({"farm": "web"}, ("op",)),
        ({"op": "status", "farm": "nosuchfarm"}, ("nosuchfarm",)),
        ({"op": "server", "farm": "nosuchfarm", "server": srv, "state": "Available"}, ("nosuchfarm",)),
        ({"op": "server", "farm": "web", "server": "127.0.0.1:1", "state": "Available"}, ("127.0.0.1:1",)),
        ({"op": "server", "farm": "web", "server": srv, "state": "Sleeping"}, ("Sleeping", "state")),
        ({"op": "server", "farm": "web", "server": srv}, ("state",)),
        ({"op": "farm", "farm": "web", "state": "Maybe"}, ("Maybe", "state")),
        ({"op": "health", "farm": "web", "server": srv, "healthy": "yes"}, ("healthy",)),
        ({"op": "verify", "farm": "nosuchfarm"}, ("nosuchfarm",)),
        ({"op": "reset", "farm": "web", "server": "10.9.9.9:80"}, ("10.9.9.9",)),
    ]
    for req, words in cases:
        ans = fg.control(req)
        assert ans.get("ok") is False, "request %r must be refused: %s" % (req, ans)
        err = ans.get("error")
        assert isinstance(err, str) and err.strip(), "request %r: a refusal needs an error text: %s" % (req, ans)
        assert any(w.lower() in err.lower() for w in words), \
            "request %r: the error %r should name the problem (one of %s)" % (req, err, words)
    # nothing changed
    for farm_name in ("web", "two"):
        s = fg.server_status(farm_name, a.port)
        assert s.get("state") == "Available" and s.get("healthy") is True, s
    # a request over 64 KB is refused or the connection closed, without harm
    try:
        raw = control_raw(fg.control_socket, b'{"op":"status","pad":"' + b"x" * 70000 + b'"}\n', timeout=10)
    except (BrokenPipeError, ConnectionResetError):
        raw = b""
    if raw:
        ans = json.loads(raw)
        assert ans.get("ok") is False and "farms" not in ans, "a 70 KB request must be refused: %s" % raw[:300]
    # a client that connects and sends nothing does not block anyone
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(fg.control_socket)
    try:
        t0 = time.monotonic()
        assert fg.control({"op": "status"}).get("ok") is True
        assert get(fg, "/while-idle").status == 200
        assert time.monotonic() - t0 < 1.0 * env.slow, "an idle control client held up the daemon"
    finally:
        idle.close()
    # farmgatectl: exit 1 when refused, 2 on usage errors, 1 when no daemon listens
    for args, code in ((("server", "web", "127.0.0.1:1", "available"), 1),
                       (("farm", "nosuchfarm", "offline"), 1),
                       (("server", "web", srv, "sideways"), 2),
                       (("farm", "web"), 2),
                       (("bogus-command",), 2)):
        p = fg.ctl(*args)
        assert p.returncode == code, "`%s` must exit %d, got %d:\n%s" % (p.cmd, code, p.returncode, p.output)
        assert p.stderr.strip(), "`%s` must say why on stderr" % p.cmd
    p = env.ctl("status", socket_path=env.path("nobody-listens.sock"))
    assert p.returncode == 1 and p.stderr.strip(), "no daemon: exit 1 with a message: %d %s" % (p.returncode, p.output)
    fg.assert_alive()


def test_control_socket_not_stolen(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    path = env.sock_path("shared.sock")
    first = env.farmgated(make_config(farms=[farm("one", [server(a.port)])], rules=[arr_lb_rule("one", "one.local")],
                                      control={"socket": path}))
    assert first.control_socket == path
    assert [f["name"] for f in first.status()] == ["one"]
    # a second daemon asked to use the same path must not take it over: it refuses to start,
    # or runs without a control socket; either way the socket still reaches the first one
    cfg2 = make_config(farms=[farm("two", [server(b.port)])], rules=[arr_lb_rule("two", "two.local")],
                       listeners=[{"address": "127.0.0.1", "port": free_port()}], control={"socket": path})
    cfg2_path = env.write_json("second.json", cfg2)
    log2 = env.path("second.log")
    with open(log2, "wb") as lf:
        second = subprocess.Popen([env.bin, "-c", cfg2_path], stdin=subprocess.DEVNULL, stdout=lf,
                                  stderr=subprocess.STDOUT, env=env.proc_env, cwd=env.tmp)

    def stop_second():
        if second.poll() is None:
            second.kill()
            second.wait(10)
    env.on_cleanup(stop_second)

    def second_settled():
        with open(log2, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return second.poll() is not None or " started" in text
    wait_for(second_settled, 10 * env.slow, msg="the second farmgated to start or give up")
    with open(log2, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    assert path in text or "control" in text.lower(), \
        "the second daemon must say that the control socket is in use:\n%s" % text[-2000:]
    ans = control_request(path, {"op": "status"})
    assert ans.get("ok") is True and [f["name"] for f in ans["farms"]] == ["one"], \
        "the socket must still reach the first daemon: %s" % ans
    if second.poll() is None:
        second.terminate()
        second.wait(10 * env.slow)
    else:
        assert second.returncode != 0, "a daemon that gives up must exit non-zero"
    with open(log2, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    assert "ERROR: AddressSanitizer" not in text and "runtime error:" not in text, text[-3000:]
    ans = control_request(path, {"op": "status"})
    assert [f["name"] for f in ans["farms"]] == ["one"], "the second daemon's exit must not remove the socket"
    # a stale socket file (nobody listening) is replaced
    stale = env.sock_path("stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    third = env.farmgated(make_config(farms=[farm("three", [server(b.port)])],
                                      rules=[arr_lb_rule("three", "three.local")], control={"socket": stale}))
    assert [f["name"] for f in third.status()] == ["three"], "a stale socket file must be replaced"
    assert stat.S_IMODE(os.lstat(stale).st_mode) == 0o600
