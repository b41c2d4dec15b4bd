"""farmgatectl status / server / farm / health: mostly against a fake control socket (a unix
socket server here that records the exact request line and answers canned JSON in the shapes
farmgated sends, per docs/control.md), for request bytes, tables, errors, exit status and the
timeout; test_ctl_against_farmgated runs the same commands against the real daemon."""

import json
import os
import re
import socket
import subprocess
import threading
import time

import harness
from harness import SanitizerError

FARM_WEB = {
    "name": "web", "state": "Online", "enabled": True,
    "healthCheck": {"url": "http://web.example.com/health", "intervalMs": 5000},
    "counters": {"currentRequests": 1, "totalRequests": 12, "failedRequests": 1,
                 "requestsPerSecond": 0.4, "bytesSent": 1234, "bytesReceived": 98765,
                 "responseTimeMs": 3, "webSocketCurrent": 0, "webSocketTotal": 0},
    "servers": [
        {"server": "127.0.0.1:8081", "address": "127.0.0.1", "httpPort": 8081, "enabled": True,
         "weight": 100, "state": "Available", "healthy": True,
         "health": {"lastResult": "Success", "lastStatus": 200, "lastTimeMs": 2,
                    "lastReason": "", "consecutiveFailures": 0, "liveFailures": 0,
                    "since": "2026-11-22T10:00:00Z"},
         "counters": {"currentRequests": 1, "totalRequests": 10, "failedRequests": 0,
                      "requestsPerSecond": 0.3, "bytesSent": 1000, "bytesReceived": 90000,
                      "responseTimeMs": 2, "webSocketCurrent": 0, "webSocketTotal": 0}},
        {"server": "127.0.0.1:8082", "address": "127.0.0.1", "httpPort": 8082, "enabled": True,
         "weight": 100, "state": "DisallowNewConnections", "healthy": False,
         "health": {"lastResult": "ConnectionFailure", "lastStatus": 0, "lastTimeMs": 3001,
                    "lastReason": "connect: Connection refused\x1b[31m",
                    "consecutiveFailures": 3, "liveFailures": 0,
                    "since": "2026-11-22T10:05:00Z"},
         "counters": {"currentRequests": 0, "totalRequests": 2, "failedRequests": 1,
                      "requestsPerSecond": 0, "bytesSent": 234, "bytesReceived": 8765,
                      "responseTimeMs": 12.5, "webSocketCurrent": 0, "webSocketTotal": 0}},
    ]}
FARM_API = {
    "name": "api", "state": "Offline", "enabled": True, "healthCheck": None,
    "counters": {"currentRequests": 0, "totalRequests": 0, "failedRequests": 0,
                 "requestsPerSecond": 0, "bytesSent": 0, "bytesReceived": 0,
                 "responseTimeMs": 0, "webSocketCurrent": 0, "webSocketTotal": 0},
    "servers": [
        {"server": "[::1]:9000", "address": "::1", "httpPort": 9000, "enabled": False,
         "weight": 50, "state": "UnavailableGracefully", "healthy": True,
         "health": {"lastResult": "", "lastStatus": 0, "lastTimeMs": 0, "lastReason": "",
                    "consecutiveFailures": 0, "liveFailures": 0, "since": ""},
         "counters": {"currentRequests": 0, "totalRequests": 0, "failedRequests": 0,
                      "requestsPerSecond": 0, "bytesSent": 0, "bytesReceived": 0,
                      "responseTimeMs": 0, "webSocketCurrent": 0, "webSocketTotal": 0}},
    ]}


class FakeDaemon:
    """A unix stream socket at env.path(name) playing farmgated's control socket: one request
    line per connection, recorded in .requests (raw bytes); answer(request_dict) returns the
    answer (a dict is sent as one JSON line, bytes as they are, None closes without one);
    delay seconds pass before answering. Stopped at env.close()."""

    def __init__(self, env, answer, name="ctl.sock", delay=0.0):
        self.path = env.path(name)
        self.answer = answer
        self.delay = delay
        self.requests = []
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        env.on_cleanup(self.stop)

    def _serve(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                c.settimeout(5)
                data = b""
                try:
                    while not data.endswith(b"\n"):
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                self.requests.append(data)
                if self.stopping.wait(self.delay):
                    return
                try:
                    ans = self.answer(json.loads(data))
                except ValueError:
                    ans = {"ok": False, "error": "bad request"}
                if ans is None:
                    continue
                if isinstance(ans, dict):
                    ans = json.dumps(ans).encode() + b"\n"
                try:
                    c.sendall(ans)
                except OSError:
                    pass

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class Result:
    def __init__(self, cmd, rc, out, err, secs):
        self.cmd, self.rc, self.out, self.err, self.secs = cmd, rc, out, err, secs

    def __repr__(self):
        return "`%s` -> exit %s after %.2fs\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(self.cmd), self.rc, self.secs, self.out, self.err)


def ctl(env, *args, sock=None, extra_env=None, timeout=30):
    """Runs farmgatectl args (with --socket sock unless None); one stderr line on failure."""
    exe = os.path.join(os.path.dirname(env.farmgated_bin), "farmgatectl")
    assert os.access(exe, os.X_OK), "%s is missing (run make all)" % exe
    cmd = [exe] + list(args) + (["--socket", sock] if sock else [])
    penv = dict(env.proc_env)
    penv.pop("FARMGATE_SOCKET", None)
    penv.update(extra_env or {})
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, timeout=timeout * env.slow, env=penv)
    r = Result(cmd, p.returncode, p.stdout.decode("utf-8", "replace"),
               p.stderr.decode("utf-8", "replace"), time.monotonic() - t0)
    rep = harness.sanitizer_report(r.out + r.err)
    if rep:
        raise SanitizerError("sanitizer report from `%s`:\n%s" % (" ".join(cmd), rep))
    if r.rc != 0:
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("farmgatectl: "), r
    return r


def row(line):
    """A table line split on runs of two or more spaces."""
    return re.split(r"\s{2,}", line.strip())


def test_ctl_status_table(env):
    d = FakeDaemon(env, lambda req: {"ok": True, "farms": [FARM_WEB, FARM_API]})
    r = ctl(env, "status", sock=d.path)
    assert r.rc == 0, r
    assert d.requests == [b'{"op":"status"}\n'], d.requests
    lines = r.out.splitlines()
    assert lines[0] == ("farm web: Online, health check http://web.example.com/health "
                        "every 5000 ms"), r
    assert row(lines[1]) == ["SERVER", "STATE", "HEALTH", "CUR", "TOTAL", "FAILED", "RPS",
                              "RESP(ms)", "SENT", "RECV", "LAST PROBE"], r
    assert row(lines[2]) == ["127.0.0.1:8081", "Available", "healthy", "1", "10", "0", "0.3",
                              "2", "1000", "90000", "Success 200 in 2 ms"], r
    # the escape sequence in the reason is not passed to the terminal
    assert row(lines[3]) == ["127.0.0.1:8082", "DisallowNewConnections", "unhealthy", "0", "2",
                              "1", "0.0", "12.5", "234", "8765",
                              "ConnectionFailure in 3001 ms: connect: Connection refused?[31m"], r
    assert "\x1b" not in r.out, r
    assert row(lines[4]) == ["(farm)", "1", "12", "1", "0.4", "3", "1234", "98765"], r
    assert lines[5] == "" and not any(line.endswith(" ") for line in lines), r
    assert lines[6] == "farm api: Offline, no health check URL", r
    assert row(lines[8]) == ["[::1]:9000", "UnavailableGracefully (disabled)", "healthy", "0",
                              "0", "0", "0.0", "0", "0", "0", "-"], r
    # columns line up: every row starts its STATE column where the heading does
    col = lines[1].index("STATE")
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[2:4]), r
    # right-aligned numbers end where their heading ends
    end = lines[1].index("TOTAL") + len("TOTAL")
    assert lines[2][end - 2:end] == "10" and lines[3][end - 1] == "2", r


def test_ctl_status_one_farm_json_and_socket_choice(env):
    answer = {"ok": True, "farms": [FARM_WEB]}
    d = FakeDaemon(env, lambda req: answer)
    r = ctl(env, "status", "web", "--json", sock=d.path)
    assert r.rc == 0, r
    assert d.requests == [b'{"op":"status","farm":"web"}\n'], d.requests
    assert json.loads(r.out) == answer and r.out.endswith("}\n"), r
    # FARMGATE_SOCKET when no --socket; --socket wins over it
    r = ctl(env, "status", "--json", extra_env={"FARMGATE_SOCKET": d.path})
    assert r.rc == 0 and json.loads(r.out) == answer, r
    r = ctl(env, "status", "--socket=" + d.path, extra_env={"FARMGATE_SOCKET": "/nonexistent"})
    assert r.rc == 0 and r.out.startswith("farm web: Online"), r
    assert len(d.requests) == 3, d.requests
    # no farms
    d2 = FakeDaemon(env, lambda req: {"ok": True, "farms": []}, name="empty.sock")
    r = ctl(env, "status", sock=d2.path)
    assert r.rc == 0 and r.out == "no farms\n", r


def test_ctl_state_changes(env):
    # farmgated's shapes: server and health {"farm": name, "status": server}, farm and
    # reset {"farm": farm}; the server's name in the answer is the resolved one
    def answer(req):
        op = req["op"]
        if op == "server":
            return {"ok": True, "farm": "web",
                    "status": dict(FARM_WEB["servers"][0], state=req["state"])}
        if op == "health":
            return {"ok": True, "farm": "web",
                    "status": dict(FARM_WEB["servers"][0], healthy=req["healthy"])}
        if op == "farm":
            return {"ok": True, "farm": dict(FARM_WEB, state=req["state"])}
        if op == "reset":
            return {"ok": True, "farm": FARM_WEB}
        return {"ok": False, "error": "unexpected op " + op}

    d = FakeDaemon(env, answer)
    cases = [
        (["server", "web", "127.0.0.1", "drain"],
         '{"op":"server","farm":"web","server":"127.0.0.1","state":"DisallowNewConnections"}',
         "farm web server 127.0.0.1:8081: DisallowNewConnections"),
        (["server", "web", "127.0.0.1:8081", "available"],
         '{"op":"server","farm":"web","server":"127.0.0.1:8081","state":"Available"}',
         "farm web server 127.0.0.1:8081: Available"),
        (["server", "web", "127.0.0.1:8081", "stop-graceful"],
         '{"op":"server","farm":"web","server":"127.0.0.1:8081",'
         '"state":"UnavailableGracefully"}',
         "farm web server 127.0.0.1:8081: UnavailableGracefully"),
        (["server", "web", "127.0.0.1:8081", "stop-immediate"],
         '{"op":"server","farm":"web","server":"127.0.0.1:8081",'
         '"state":"UnavailableImmediately"}',
         "farm web server 127.0.0.1:8081: UnavailableImmediately"),
        (["farm", "web", "offline"], '{"op":"farm","farm":"web","state":"Offline"}',
         "farm web: Offline"),
        (["farm", "web", "online"], '{"op":"farm","farm":"web","state":"Online"}',
         "farm web: Online"),
        (["health", "web", "127.0.0.1:8081", "unhealthy"],
         '{"op":"health","farm":"web","server":"127.0.0.1:8081","healthy":false}',
         "farm web server 127.0.0.1:8081: unhealthy"),
        (["health", "web", "127.0.0.1:8081", "healthy"],
         '{"op":"health","farm":"web","server":"127.0.0.1:8081","healthy":true}',
         "farm web server 127.0.0.1:8081: healthy"),
        (["farm", "web", "reset"], '{"op":"reset","farm":"web"}', "farm web: counters reset"),
        (["farm", "web", "reset", "--server", "127.0.0.1:8082"],
         '{"op":"reset","farm":"web","server":"127.0.0.1:8082"}',
         "farm web server 127.0.0.1:8082: counters reset"),
    ]
    for args, req, out in cases:
        n = len(d.requests)
        r = ctl(env, *args, sock=d.path)
        assert r.rc == 0 and r.out == out + "\n", (args, r)
        assert d.requests[n:] == [req.encode() + b"\n"], (args, d.requests[n:])


def test_ctl_request_escaping(env):
    d = FakeDaemon(env, lambda req: {"ok": False, "error": "no farm " + req["farm"]})
    name = 'we"b\\ \x01\t\x7f caf\u00e9 \U0001f600'
    r = ctl(env, "status", name, sock=d.path)
    assert r.rc == 1, r
    assert d.requests == [('{"op":"status","farm":"we\\"b\\\\ \\u0001\\t\\u007f caf\u00e9 '
                           '\U0001f600"}\n').encode()], d.requests
    assert json.loads(d.requests[0])["farm"] == name
    # the daemon's error is printed with control characters made harmless
    assert r.err == "farmgatectl: no farm we\"b\\ ??? caf\u00e9 \U0001f600\n", r
    # arguments that are not UTF-8 never reach the daemon
    exe = os.path.join(os.path.dirname(env.farmgated_bin), "farmgatectl")
    p = subprocess.run([exe, "status", b"\xff\xfe", "--socket", d.path], capture_output=True,
                       env=env.proc_env, timeout=30 * env.slow)
    assert p.returncode == 2 and b"not valid UTF-8" in p.stderr, p
    assert len(d.requests) == 1


def test_ctl_verify(env):
    results = [
        {"server": "127.0.0.1:8081", "result": "Success", "status": 200, "timeMs": 2,
         "reason": ""},
        {"server": "127.0.0.1:8082", "result": "ConnectionFailure", "status": 0, "timeMs": 3001,
         "reason": "connect: Connection refused"},
        {"server": "10.0.0.13:80", "result": "StatusCodeFailure", "status": 503, "timeMs": 15,
         "reason": "status 503 is not in 200-399"},
    ]
    d = FakeDaemon(env, lambda req: {"ok": True, "farm": "web", "results": results})
    r = ctl(env, "farm", "web", "verify", sock=d.path)
    assert r.rc == 0, r
    assert d.requests == [b'{"op":"verify","farm":"web"}\n'], d.requests
    assert [row(line) for line in r.out.splitlines()] == [
        ["SERVER", "RESULT", "STATUS", "TIME(ms)", "REASON"],
        ["127.0.0.1:8081", "Success", "200", "2"],
        ["127.0.0.1:8082", "ConnectionFailure", "-", "3001", "connect: Connection refused"],
        ["10.0.0.13:80", "StatusCodeFailure", "503", "15", "status 503 is not in 200-399"],
    ], r
    r = ctl(env, "farm", "web", "verify", "--json", sock=d.path)
    assert r.rc == 0 and json.loads(r.out)["results"] == results, r
    d2 = FakeDaemon(env, lambda req: {"ok": True, "farm": "web", "results": []}, name="none.sock")
    r = ctl(env, "farm", "web", "verify", sock=d2.path)
    assert r.rc == 0 and r.out == "farm web: no servers to verify\n", r


def test_ctl_errors(env):
    d = FakeDaemon(env, lambda req: {"ok": False, "error": "no farm 'nope'"})
    r = ctl(env, "farm", "nope", "offline", sock=d.path)
    assert r.rc == 1 and r.out == "" and r.err == "farmgatectl: no farm 'nope'\n", r
    # --json: the answer on stdout, the error on stderr, still exit 1
    r = ctl(env, "farm", "nope", "offline", "--json", sock=d.path)
    assert r.rc == 1 and json.loads(r.out) == {"ok": False, "error": "no farm 'nope'"}, r

    # no daemon
    missing = env.path("missing.sock")
    r = ctl(env, "status", sock=missing)
    assert r.rc == 1 and r.err == ("farmgatectl: cannot connect to %s: No such file or "
                                   "directory (is farmgated running?)\n" % missing), r
    r = ctl(env, "status", extra_env={"FARMGATE_SOCKET": ""})
    if not os.path.exists("/run/farmgated.sock"):
        assert r.rc == 1 and r.err == ("farmgatectl: cannot connect to /run/farmgated.sock: "
                                       "No such file or directory (is farmgated running?)\n"), r
    # a socket file nobody listens on
    stale = env.path("stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    r = ctl(env, "status", sock=stale)
    assert r.rc == 1 and "Connection refused (is farmgated running?)" in r.err, r

    # answers that are not answers
    for name, ans, msg in [("garbage.sock", b"hello\n", "bad answer from"),
                           ("noans.sock", None, "farmgated closed the connection"),
                           ("nook.sock", b'{"farms":[]}\n', 'no "ok": true or false'),
                           ("arr.sock", b'[1]', 'no "ok": true or false'),
                           ("nofarms.sock", b'{"ok":true}', "the answer has no farms array")]:
        dd = FakeDaemon(env, lambda req, a=ans: a, name=name)
        r = ctl(env, "status", sock=dd.path)
        assert r.rc == 1 and msg in r.err, (name, r)

    # usage: exit 2, nothing sent
    for args, msg in [(["server", "web", "a:1"], "usage: farmgatectl server"),
                      (["server", "web", "a:1", "up"], "bad server state 'up'"),
                      (["farm", "web"], "usage: farmgatectl farm"),
                      (["farm", "web", "explode"], "bad farm action 'explode'"),
                      (["farm", "web", "online", "--server", "a:1"], "--server applies only"),
                      (["health", "web", "a:1", "sick"], "bad health 'sick'"),
                      (["status", "a", "b"], "unexpected argument 'b'"),
                      (["status", "--colour"], "unknown option --colour"),
                      (["status", "--timeout", "0"], "bad --timeout 0"),
                      (["status", "--timeout", "x"], "bad --timeout x"),
                      (["status", "--timeout"], "--timeout needs a value"),
                      (["status", ""], "empty argument")]:
        r = ctl(env, *args, extra_env={"FARMGATE_SOCKET": d.path})
        assert r.rc == 2 and msg in r.err, (args, r)
    assert len(d.requests) == 2, d.requests
    r = ctl(env, "status", "--help")
    assert r.rc == 0 and "stop-immediate" in r.out, r
    r = ctl(env, "help")
    assert r.rc == 0 and "farm FARM verify" in r.out and "import-pfx" in r.out, r


def test_ctl_timeout(env):
    d = FakeDaemon(env, lambda req: {"ok": True, "farms": []}, delay=30)
    r = ctl(env, "status", "--timeout", "0.5", sock=d.path)
    assert r.rc == 1 and r.err == ("farmgatectl: no answer from %s within 0.5 s (use --timeout "
                                   "to wait longer)\n" % d.path), r
    assert r.secs < 5 * env.slow, r
    # a slow but not too slow answer arrives
    d2 = FakeDaemon(env, lambda req: {"ok": True, "farms": []}, name="slow.sock", delay=0.5)
    r = ctl(env, "status", "--timeout", "5", sock=d2.path)
    assert r.rc == 0 and r.out == "no farms\n", r


def test_ctl_large_answer(env):
    many = [dict(FARM_WEB, name="farm%04d" % i) for i in range(1500)]
    big = {"ok": True, "farms": many}
    d = FakeDaemon(env, lambda req: big)
    r = ctl(env, "status", sock=d.path)
    assert r.rc == 0 and r.out.count("\nfarm farm") == 1499, r.rc
    # over 4 MB is refused
    huge = b'{"ok":true,"farms":[],"pad":"' + b"x" * (4 << 20) + b'"}'
    d2 = FakeDaemon(env, lambda req: huge, name="huge.sock")
    r = ctl(env, "status", sock=d2.path)
    assert r.rc == 1 and "larger than 4 MB" in r.err, r.err


def test_ctl_against_farmgated(env):
    """The same commands against the real daemon: answers parse, states change, errors come
    back as one line and exit 1."""
    one, two = env.backend(name="one"), env.backend(name="two")
    sock = getattr(env, "sock_path", env.path)("fg-ctl.sock")
    cfg = harness.one_farm_config(
        [one.port, two.port], host="web.local", config={"control": {"socket": sock}},
        healthCheck={"url": "http://web.local/health", "interval": "00:01:00",
                     "timeout": "00:00:02", "retries": 1})
    fg = env.farmgated(cfg)
    harness.wait_for(lambda: os.path.exists(sock), 5 * env.slow, msg="the control socket")
    s1, s2 = "127.0.0.1:%d" % one.port, "127.0.0.1:%d" % two.port

    def ok(*args):
        r = ctl(env, *args, sock=sock)
        assert r.rc == 0, r
        return r

    r = ok("status")
    lines = r.out.splitlines()
    assert lines[0] == "farm web: Online, health check http://web.local/health every 60000 ms", r
    assert row(lines[1])[0] == "SERVER" and row(lines[1])[-1] == "LAST PROBE", r
    assert [row(l)[:2] for l in lines[2:4]] == [[s1, "Available"], [s2, "Available"]], r
    assert row(lines[4])[0] == "(farm)", r
    st = json.loads(ok("status", "web", "--json").out)
    assert st["ok"] is True and [s["server"] for s in st["farms"][0]["servers"]] == [s1, s2], st

    assert ok("server", "web", s1, "drain").out == "farm web server %s: DisallowNewConnections\n" % s1
    r = ok("status", "web")
    assert row(r.out.splitlines()[2])[:2] == [s1, "DisallowNewConnections"], r
    assert ok("server", "web", s1, "available").out == "farm web server %s: Available\n" % s1
    r = ctl(env, "server", "web", "127.0.0.1", "stop-graceful", sock=sock)  # both on 127.0.0.1
    assert r.rc == 1 and "several servers at 127.0.0.1" in r.err, r

    assert ok("health", "web", s2, "unhealthy").out == "farm web server %s: unhealthy\n" % s2
    r = ok("status")
    assert row(r.out.splitlines()[3])[:3] == [s2, "Available", "unhealthy"], r
    assert ok("health", "web", s2, "healthy").out == "farm web server %s: healthy\n" % s2

    assert ok("farm", "web", "offline").out == "farm web: Offline\n"
    assert harness.http_request(fg.port, "GET", "/", host="web.local").status == 503
    assert ok("farm", "web", "online").out == "farm web: Online\n"
    assert harness.http_request(fg.port, "GET", "/", host="web.local").status == 200

    r = ok("farm", "web", "verify")
    got = [row(l) for l in r.out.splitlines()]
    assert got[0] == ["SERVER", "RESULT", "STATUS", "TIME(ms)", "REASON"], r
    assert sorted(g[:3] for g in got[1:]) == sorted([[s1, "Success", "200"],
                                                     [s2, "Success", "200"]]), r

    assert ok("farm", "web", "reset").out == "farm web: counters reset\n"
    assert ok("farm", "web", "reset", "--server", s2).out == \
        "farm web server %s: counters reset\n" % s2
    st = json.loads(ok("status", "--json").out)
    assert st["farms"][0]["counters"]["totalRequests"] == 0, st

    r = ctl(env, "farm", "nope", "offline", sock=sock)
    assert r.rc == 1 and r.err == 'farmgatectl: no farm "nope"\n', r
