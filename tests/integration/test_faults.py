"""Backend failures: refused, reset/closed mid-response, black hole, bad
responses, retries (GET yes, POST never once it reached a backend)."""

import os
import time

from harness import (free_port, http_request, one_farm_config, parse_responses, RawClient, Reply, server)


def _error_lines(fg, since):
    return [l for l in fg.new_log(since).splitlines() if l.strip() and "access:" not in l]


def _assert_reason_logged(fg, since, words, what):
    lines = _error_lines(fg, since)
    low = [l.lower() for l in lines]
    assert any(any(w in l for w in words) for l in low), \
        "%s: expected a log line with a reason (one of %s), got:\n%s" % (what, words, "\n".join(lines[-10:]))


def test_backend_refused_is_502(env):
    dead = free_port()
    fg = env.farmgated(one_farm_config([dead]))
    mark = fg.log_mark()
    t0 = time.monotonic()
    r = http_request(fg.port, "GET", "/", host="web.local", timeout=15)
    assert r.status == 502, "connection refused by the backend must give 502: %s" % r.summary()
    assert time.monotonic() - t0 < 5 * env.slow, "502 for a refused connection took too long"
    _assert_reason_logged(fg, mark, ("refused", "connect", str(dead)), "refused backend")


def _assert_not_complete(data, what):
    rs = [r for r in parse_responses(data) if not (100 <= r.status < 200)]
    if not rs:
        return  # closed without a response: fine
    r = rs[0]
    if r.complete:
        assert r.status >= 500, \
            "%s: the client got a complete-looking %d response (%d body bytes) instead of a broken one" % (
                what, r.status, len(r.body))


def _mid_body_case(env, reply, what):
    be = env.backend(reply, name="B")
    fg = env.farmgated(one_farm_config([be.port]))
    mark = fg.log_mark()
    with RawClient(fg.port, timeout=15) as c:
        c.request("GET", "/big", host="web.local")  # keep-alive: farmgated must close it
        assert c.wait_closed(10 * env.slow), \
            "%s: farmgated kept the client connection open after the backend broke" % what
        data = bytes(c.buf)
    _assert_not_complete(data, what)
    _assert_reason_logged(fg, mark, ("reset", "closed", "prematurely", "incomplete", "upstream", "backend",
                                     "eof", "truncat", "abort"), what)
    # farmgated keeps serving
    be.handler = Reply(200, b"fine")
    r = http_request(fg.port, "GET", "/after", host="web.local")
    assert r.status == 200 and r.body == b"fine", r.summary()


def test_backend_reset_mid_body_content_length(env):
    _mid_body_case(env, Reply(200, os.urandom(200000), abort="reset", abort_after=100000),
                   "backend RST mid Content-Length body")


def test_backend_close_mid_body_content_length(env):
    _mid_body_case(env, Reply(200, os.urandom(200000), abort="close", abort_after=100000),
                   "backend FIN mid Content-Length body")


def test_backend_reset_mid_body_chunked(env):
    _mid_body_case(env, Reply(200, os.urandom(200000), chunked=True, chunk_size=10000, abort="reset",
                              abort_after=100500),
                   "backend RST mid chunked body")


def test_backend_close_mid_body_chunked(env):
    _mid_body_case(env, Reply(200, os.urandom(200000), chunked=True, chunk_size=10000, abort="close",
                              abort_after=120000),
                   "backend FIN mid chunked body")


def test_backend_black_hole_is_504(env):
    be = env.backend(Reply(black_hole=True), name="hole")
    fg = env.farmgated(one_farm_config([be.port], protocol={"timeout": 2}))
    mark = fg.log_mark()
    t0 = time.monotonic()
    r = http_request(fg.port, "GET", "/", host="web.local", timeout=20 * env.slow)
    dt = time.monotonic() - t0
    assert r.status == 504, "a backend that never answers must give 504: %s" % r.summary()
    assert 1.5 <= dt <= 6 * env.slow, "504 came after %.1fs; protocol.timeout is 2s" % dt
    _assert_reason_logged(fg, mark, ("timeout", "timed out"), "black hole backend")


def test_backend_garbage_response_is_502(env):
    be = env.backend(Reply(raw=b"this is not HTTP at all\r\n\r\n"), name="junk")
    fg = env.farmgated(one_farm_config([be.port]))
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 502, "an unparseable backend response must give 502: %s" % r.summary()


def test_backend_response_head_too_big_is_502(env):
    be = env.backend(Reply(200, b"x", headers=[("X-Big", "a" * 70000)]), name="big")
    fg = env.farmgated(one_farm_config([be.port]))
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 502, "response head over maxResponseHeaderSize (64 KiB) must give 502: %s" % r.summary()
    assert "a" * 1000 not in r.text


def test_backend_closes_without_response_is_502(env):
    be = env.backend(Reply(raw=b"", abort="close"), name="closer")
    fg = env.farmgated(one_farm_config([be.port]))
    r = http_request(fg.port, "POST", "/", host="web.local", body=b"x")
    assert r.status == 502, "backend closed without answering: expected 502, got %s" % r.summary()


def test_get_retried_when_first_server_refuses(env):
    dead = free_port()
    live = env.backend(name="LIVE")
    fg = env.farmgated(one_farm_config([server(dead), server(live.port)]))
    for i in range(10):
        r = http_request(fg.port, "GET", "/g%d" % i, host="web.local")
        assert r.status == 200 and r.header("X-Backend") == "LIVE", \
            "GET %d should be retried on the live server when the first refuses: %s" % (i, r.summary())
    assert live.count == 10


def test_post_never_retried_after_reaching_backend(env):
    breaker = env.backend(Reply(raw=b"", abort="reset"), name="BREAKER")  # reads the request, then RST
    good = env.backend(name="GOOD")
    fg = env.farmgated(one_farm_config([server(breaker.port), server(good.port)]))
    statuses = []
    for i in range(9):
        # with a body, with an empty body, and without any body framing
        kind = i % 3
        body = b"post-%d" % i if kind == 0 else (b"" if kind == 1 else None)
        r = http_request(fg.port, "POST", "/p%d" % i, host="web.local", body=body, timeout=15)
        statuses.append(r.status)
        assert r.status in (200, 502), "POST %d: %s" % (i, r.summary())
    broken = {q.target for q in breaker.requests}
    served = {q.target for q in good.requests}
    assert breaker.count >= 3, "round robin sent only %d POSTs to the breaking server" % breaker.count
    assert not (broken & served), "POSTs %s reached a backend and were retried on another" % sorted(broken & served)
    assert statuses.count(502) == breaker.count and statuses.count(200) == good.count, \
        "statuses %s vs breaker %d / good %d" % (statuses, breaker.count, good.count)
    assert breaker.count + good.count == 9, (breaker.count, good.count)
