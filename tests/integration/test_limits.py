"""Client-side limits and timeouts: 414, 431, 408 (head and body), idle
keep-alive timeout, maxConnections."""

import socket
import time

from harness import (http_request, one_farm_config, raw_request, parse_responses, RawClient, wait_for)


def _setup(env, **config):
    be = env.backend(name="B")
    fg = env.farmgated(one_farm_config([be.port], config=config))
    return be, fg


def _status_of(data):
    rs = parse_responses(data)
    return rs[0].status if rs else None


def test_request_line_too_long_is_414(env):
    be, fg = _setup(env, limits={"maxRequestLineLength": 1024})
    ok_target = "/" + "a" * 900
    r = http_request(fg.port, "GET", ok_target, host="web.local")
    assert r.status == 200, "a %d-byte request line is under the limit: %s" % (len(ok_target) + 15, r.summary())
    long_target = "/" + "b" * 2000
    data = raw_request(fg.port, ("GET %s HTTP/1.1\r\nHost: web.local\r\n\r\n" % long_target).encode())
    assert _status_of(data) == 414, "request line over maxRequestLineLength must give 414: %r" % data[:200]
    assert all(q.target != long_target for q in be.requests), "the long request reached the backend"


def test_request_head_too_big_is_431(env):
    be, fg = _setup(env, limits={"maxRequestHeadersSize": 2048})
    small = [("X-Fill-%d" % i, "v" * 100) for i in range(10)]  # ~1.2 KB
    r = http_request(fg.port, "GET", "/small", host="web.local", headers=small)
    assert r.status == 200, "a 1.2 KB head is under 2048: %s" % r.summary()
    big = "".join("X-Fill-%d: %s\r\n" % (i, "v" * 100) for i in range(40))  # ~4.6 KB
    data = raw_request(fg.port, ("GET /big HTTP/1.1\r\nHost: web.local\r\n%s\r\n" % big).encode())
    assert _status_of(data) == 431, "head over maxRequestHeadersSize must give 431: %r" % data[:200]
    assert all(q.target != "/big" for q in be.requests)


def test_too_many_headers_is_431(env):
    be, fg = _setup(env, limits={"maxRequestHeaders": 10})
    r = http_request(fg.port, "GET", "/few", host="web.local", headers=[("X-H%d" % i, "1") for i in range(5)])
    assert r.status == 200, r.summary()
    hs = "".join("X-H%d: 1\r\n" % i for i in range(20))
    data = raw_request(fg.port, ("GET /many HTTP/1.1\r\nHost: web.local\r\n%s\r\n" % hs).encode())
    assert _status_of(data) == 431, "more than maxRequestHeaders fields must give 431: %r" % data[:200]


def test_slow_request_head_is_408(env):
    be, fg = _setup(env, timeouts={"requestHeader": 2})
    s = socket.create_connection(("127.0.0.1", fg.port), timeout=10)
    got = bytearray()
    t0 = time.monotonic()
    closed_at = None
    try:
        s.sendall(b"GET /slowloris HTTP/1.1\r\nHost: web.local\r\n")
        s.settimeout(0.4)
        # trickle one header byte every 0.4 s (progress must not reset the head timer)
        for i in range(40):
            try:
                s.sendall(b"X")
            except OSError:
                break
            try:
                d = s.recv(65536)
                if not d:
                    closed_at = time.monotonic()
                    break
                got += d
            except socket.timeout:
                continue
            except OSError:
                closed_at = time.monotonic()
                break
    finally:
        s.close()
    dt = (closed_at or time.monotonic()) - t0
    rs = parse_responses(bytes(got))
    assert rs and rs[0].status == 408, "slow request head: expected 408, got %r" % bytes(got[:200])
    assert closed_at is not None, "connection not closed after 408"
    assert 1.5 <= dt <= 6 * env.slow, "408 after %.1fs; requestHeader timeout is 2s" % dt
    assert be.count == 0


def test_stalled_request_body_is_408(env):
    be, fg = _setup(env, timeouts={"requestBody": 2})
    with RawClient(fg.port, timeout=15) as c:
        t0 = time.monotonic()
        c.send(b"POST /stall HTTP/1.1\r\nHost: web.local\r\nContent-Length: 100\r\n\r\n0123456789")
        r = c.read_response(timeout=12 * env.slow)
        dt = time.monotonic() - t0
    assert r.status == 408, "request body without progress: expected 408, got %s" % r.summary()
    assert 1.5 <= dt <= 6 * env.slow, "408 after %.1fs; requestBody timeout is 2s" % dt


def test_idle_keepalive_connection_closed(env):
    be, fg = _setup(env, timeouts={"keepAlive": 2})
    with RawClient(fg.port) as c:
        c.request("GET", "/", host="web.local")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.wait_closed(8 * env.slow), "idle keep-alive connection not closed (timeouts.keepAlive=2)"
        dt = time.monotonic() - t0
        assert not c.buf, "unexpected bytes on idle close: %r" % bytes(c.buf[:200])
    assert 1.5 <= dt <= 6 * env.slow, "idle connection closed after %.1fs; keepAlive timeout is 2s" % dt
    # an active connection is not cut
    with RawClient(fg.port) as c:
        for i in range(4):
            c.request("GET", "/", host="web.local")
            assert c.read_response().status == 200
            time.sleep(1)


def test_max_connections(env):
    be, fg = _setup(env, limits={"maxConnections": 4})
    held = []
    try:
        for i in range(4):
            c = RawClient(fg.port)
            c.request("GET", "/h%d" % i, host="web.local")
            assert c.read_response().status == 200
            held.append(c)
        extra = RawClient(fg.port, timeout=5)
        held.append(extra)
        try:
            extra.request("GET", "/extra", host="web.local")
        except OSError:
            pass
        assert extra.wait_closed(3), "a 5th connection over maxConnections=4 must be closed"
        rs = parse_responses(bytes(extra.buf))
        assert not any(r.status == 200 for r in rs), "the 5th connection was served: %r" % bytes(extra.buf[:200])
        # free a slot: a new connection works again
        held[0].close()

        def try_one():
            try:
                return http_request(fg.port, "GET", "/again", host="web.local", timeout=3).status == 200
            except (OSError, AssertionError):
                return False
        wait_for(try_one, timeout=5, interval=0.2, msg="a connection to be accepted after one was closed")
    finally:
        for c in held:
            c.close()
