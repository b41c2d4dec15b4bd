"""SIGHUP reload (good, bad, under load, in flight) and SIGTERM."""

import collections
import threading
import time

from harness import (http_request, one_farm_config, RawClient, ConnectionClosed, Reply, server, wait_for)


def test_reload_applies_new_config(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(one_farm_config([a.port]))
    for _ in range(3):
        assert http_request(fg.port, "GET", "/", host="web.local").header("X-Backend") == "A"
    ok, line = fg.reload(one_farm_config([b.port], host="new.local"))
    assert ok, "reload of a valid config failed: %s" % line
    assert "configuration reloaded" in line
    for _ in range(3):
        r = http_request(fg.port, "GET", "/", host="new.local")
        assert r.status == 200 and r.header("X-Backend") == "B", "new rule/farm not in effect: %s" % r.summary()
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 404, "the old rule must be gone after reload: %s" % r.summary()


def test_bad_reload_keeps_old_config(env):
    a = env.backend(name="A")
    fg = env.farmgated(one_farm_config([a.port]))
    ok, line = fg.reload("{ this is not json")
    assert not ok and "reload failed" in line, "broken JSON must log 'reload failed': %s" % line
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 200 and r.header("X-Backend") == "A", "old config must keep serving: %s" % r.summary()
    bad = one_farm_config([server(a.port, weight=-5)])
    ok, line = fg.reload(bad)
    assert not ok, "weight -5 must be refused: %s" % line
    assert "$.webFarms[0].servers[0].weight" in line, "the reload error should name the JSON path: %s" % line
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 200 and r.header("X-Backend") == "A", r.summary()
    fg.assert_alive()
    # and a good reload afterwards still works
    ok, line = fg.reload(one_farm_config([a.port], host="other.local"))
    assert ok, line
    assert http_request(fg.port, "GET", "/", host="other.local").status == 200


def test_reload_under_load_no_failed_requests(env):
    bes = [env.backend(name=n) for n in ("A", "B", "C")]
    fg = env.farmgated(one_farm_config([bes[0].port, bes[1].port]))
    stop = threading.Event()
    lock = threading.Lock()
    stats = collections.Counter()
    failures = []

    def client(k):
        c = None
        i = 0
        while not stop.is_set() and i < 100000:
            i += 1
            try:
                if c is None:
                    c = RawClient(fg.port, timeout=10)
                c.request("GET", "/load/%d/%d" % (k, i), host="web.local")
                r = c.read_response()
                if r.status != 200:
                    raise AssertionError("status %d" % r.status)
                with lock:
                    stats[r.header("X-Backend")] += 1
                    stats["total"] += 1
                if (r.header("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # noqa: every failure counts
                with lock:
                    failures.append("client %d request %d: %r" % (k, i, e))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: stats["total"] >= 20, timeout=10, msg="initial traffic")
        configs = [
            one_farm_config([server(bes[0].port, weight=300), server(bes[1].port, weight=100)]),
            one_farm_config([server(bes[0].port), server(bes[1].port), server(bes[2].port)]),
            one_farm_config([server(bes[1].port), server(bes[2].port, weight=50)]),
            one_farm_config([server(bes[0].port, weight=10), server(bes[2].port)],
                            loadBalancing={"algorithm": "LeastRequests"}),
            one_farm_config([server(bes[2].port)]),
        ]
        for cfg in configs:
            time.sleep(0.4)
            ok, line = fg.reload(cfg)
            assert ok, "reload failed: %s" % line
        before = stats["C"]
        time.sleep(0.6)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not failures, "%d request(s) failed during reloads, e.g.:\n%s" % (len(failures), "\n".join(failures[:10]))
    assert stats["total"] >= 100, "too little traffic to mean anything: %s" % dict(stats)
    assert stats["C"] > before, "after the last reload only server C is configured but it got no traffic: %s" \
        % dict(stats)
    fg.assert_alive()


def test_in_flight_request_survives_reload(env):
    old = env.backend(Reply(200, b"old-server", delay=1.5), name="OLD")
    new = env.backend(name="NEW")
    fg = env.farmgated(one_farm_config([old.port]))
    result = {}

    def slow():
        try:
            result["r"] = http_request(fg.port, "GET", "/slow", host="web.local", timeout=20)
        except Exception as e:  # noqa
            result["e"] = e

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    old.wait_requests(1, timeout=5)
    ok, line = fg.reload(one_farm_config([new.port]))
    assert ok, line
    r = http_request(fg.port, "GET", "/fresh", host="web.local")
    assert r.header("X-Backend") == "NEW", "new requests must use the new config: %s" % r.summary()
    t.join(20)
    assert "e" not in result, "in-flight request failed across reload: %r" % result.get("e")
    assert result["r"].status == 200 and result["r"].body == b"old-server", \
        "in-flight request must finish on the old server: %s" % result["r"].summary()


def test_idle_client_connection_survives_reload(env):
    a = env.backend(name="A")
    fg = env.farmgated(one_farm_config([a.port]))
    with RawClient(fg.port) as c:
        c.request("GET", "/1", host="web.local")
        assert c.read_response().status == 200
        ok, line = fg.reload(one_farm_config([server(a.port, weight=7)]))
        assert ok, line
        try:
            c.request("GET", "/2", host="web.local")
            r = c.read_response()
        except ConnectionClosed:
            raise AssertionError("reload closed an idle keep-alive client connection")
        assert r.status == 200, r.summary()


def test_sigterm_exits_zero(env):
    a = env.backend(name="A")
    fg = env.farmgated(one_farm_config([a.port]))
    idle = RawClient(fg.port)
    try:
        idle.request("GET", "/", host="web.local")
        assert idle.read_response().status == 200
        t0 = time.monotonic()
        code = fg.stop(timeout=10)  # raises if it needs SIGKILL or a sanitizer complained
        assert code == 0, "SIGTERM must exit 0, got %s" % code
        assert time.monotonic() - t0 < 10 * env.slow
        assert idle.wait_closed(2), "client connection still open after farmgated exited"
    finally:
        idle.close()
