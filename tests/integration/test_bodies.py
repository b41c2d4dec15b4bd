"""Bodies and connection handling: Content-Length and chunked both ways,
100-continue, HEAD/304, keep-alive, pipelining, upstream pooling, WebSocket,
and (release build) 1 GiB transfers with bounded memory."""

import os
import select
import socket
import subprocess
import time

from harness import (CURL, curl, http_request, one_farm_config, RawClient, Reply, RssSampler, release_only,
                     _clean_env)

GiB = 1 << 30
RSS_LIMIT_KB = 32768


def _setup(env, handler=None, **farm_kw):
    be = env.backend(handler, name="B")
    fg = env.farmgated(one_farm_config([be.port], **farm_kw))
    return be, fg


def test_content_length_body_exact(env):
    be, fg = _setup(env)
    body = os.urandom(300000)
    r = http_request(fg.port, "POST", "/upload", host="web.local", body=body,
                     headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200, r.summary()
    q = be.requests[-1]
    assert q.header("Content-Length") == "300000", "Content-Length must be kept: %r" % q.head
    assert not q.has("Transfer-Encoding"), q.head
    assert q.decoded == body, "body corrupted: got %d bytes" % len(q.decoded)


def test_chunked_request_reencoded_clean(env):
    be, fg = _setup(env)
    parts = [os.urandom(n) for n in (1, 15, 4096, 100000, 7)]
    wire = b"".join(b"%x;name=value;x=\"q\"\r\n" % len(p) + p + b"\r\n" for p in parts)
    wire += b"0;last=1\r\nX-Trailer-One: 1\r\nX-Trailer-Two: 2\r\n\r\n"
    with RawClient(fg.port) as c:
        c.send(b"POST /chunked HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Trailer-One\r\nConnection: close\r\n\r\n" + wire)
        r = c.read_response()
    assert r.status == 200, r.summary()
    q = be.requests[-1]
    assert q.decoded == b"".join(parts), "chunked body corrupted (%d bytes)" % len(q.decoded)
    assert q.header_all("Transfer-Encoding") == ["chunked"], "upstream body must be chunked: %r" % q.head
    assert not q.has("Content-Length"), "no Content-Length with chunked: %r" % q.head
    assert q.chunk_exts == [], "chunk extensions must not be forwarded: %r" % q.chunk_exts
    assert q.trailers == b"", "trailers must not be forwarded: %r" % q.trailers
    assert not q.has("Trailer"), q.head


def test_chunked_response_to_client(env):
    body = os.urandom(50000)
    be, fg = _setup(env, Reply(200, body, chunked=True, chunk_size=777, trailers=[("X-Sum", "abc")],
                               chunk_delay=0.001))
    r = http_request(fg.port, "GET", "/c", host="web.local")
    assert r.status == 200 and r.complete, r.summary()
    assert r.body == body, "chunked response body corrupted: %d bytes" % len(r.body)
    # same on a keep-alive connection, twice
    with RawClient(fg.port) as c:
        for _ in range(2):
            c.request("GET", "/c", host="web.local")
            r = c.read_response()
            assert r.body == body, "keep-alive chunked response corrupted"


def test_close_delimited_response(env):
    body = os.urandom(20000)
    be, fg = _setup(env, Reply(200, body, no_length=True))
    with RawClient(fg.port) as c:
        c.request("GET", "/eof", host="web.local")
        r = c.read_response()
        assert r.status == 200 and r.body == body, r.summary()
        # if the client connection was kept, it must still work
        if not c.wait_closed(0.3):
            c.request("GET", "/eof2", host="web.local")
            r = c.read_response()
            assert r.status == 200 and r.body == body, r.summary()


def test_expect_100_continue(env):
    be, fg = _setup(env)
    body = os.urandom(5000)
    with RawClient(fg.port) as c:
        c.send(b"PUT /e HTTP/1.1\r\nHost: web.local\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        i = c.read_interim(timeout=5)
        assert i.status == 100, "farmgated must answer 100 Continue itself, got %s" % i.summary()
        c.send(body)
        r = c.read_response()
        assert r.status == 200, r.summary()
    q = be.requests[-1]
    assert not q.has("Expect"), "Expect must not be forwarded: %r" % q.head
    assert q.decoded == body


def test_head_and_304_have_no_body(env):
    def handler(req):
        if req.method == "HEAD":
            return Reply(200, b"x" * 12345)  # the backend sends only the head
        if req.target == "/cached":
            return Reply(304, b"", headers=[("ETag", '"v1"'), ("Content-Length", "500")])
        if req.target == "/empty":
            return Reply(204, b"")
        return Reply(200, b"after")
    be, fg = _setup(env, handler)
    with RawClient(fg.port) as c:
        c.request("HEAD", "/h", host="web.local")
        r = c.read_response(head=True)
        assert r.status == 200, r.summary()
        assert r.header("Content-Length") in (None, "12345"), r.summary()
        c.request("GET", "/cached", host="web.local", headers=[("If-None-Match", '"v1"')])
        r = c.read_response()
        assert r.status == 304 and r.header("ETag") == '"v1"', r.summary()
        c.request("GET", "/empty", host="web.local")
        r = c.read_response()
        assert r.status == 204, r.summary()
        c.request("GET", "/next", host="web.local")
        r = c.read_response(timeout=5)
        assert r.status == 200 and r.body == b"after", \
            "after HEAD/304/204 the connection must be in sync: %s" % r.summary()
        time.sleep(0.2)
        assert not c.buf, "stray bytes after the responses: %r" % bytes(c.buf[:200])


def test_client_keepalive(env):
    be, fg = _setup(env)
    with RawClient(fg.port) as c:
        for i in range(10):
            c.request("GET", "/ka%d" % i, host="web.local")
            r = c.read_response()
            assert r.status == 200 and r.body.endswith(b"/ka%d" % i), "request %d: %s" % (i, r.summary())
            assert (r.header("Connection") or "").lower() != "close", "keep-alive connection closed: %s" % r.summary()


def test_pipelined_requests_answered_in_order(env):
    def handler(req):
        if req.target == "/slow":
            return Reply(200, b"first", delay=0.5)
        return Reply(200, b"second" if req.target == "/fast" else b"third")
    be, fg = _setup(env, handler)
    with RawClient(fg.port) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: web.local\r\n\r\n"
               b"GET /fast HTTP/1.1\r\nHost: web.local\r\n\r\n"
               b"POST /p HTTP/1.1\r\nHost: web.local\r\nContent-Length: 3\r\n\r\nabc")
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"first", b"second", b"third"], "pipelined responses out of order: %r" % bodies


def test_upstream_connections_pooled(env):
    be, fg = _setup(env)
    for i in range(20):
        r = http_request(fg.port, "GET", "/pool%d" % i, host="web.local")
        assert r.status == 200, r.summary()
    assert be.count == 20
    assert be.connections <= 3, "20 sequential requests used %d backend connections (keep-alive pool expected)" \
        % be.connections


def test_upstream_keepalive_false_not_pooled(env):
    be, fg = _setup(env, protocol={"keepAlive": False})
    for i in range(6):
        r = http_request(fg.port, "GET", "/np%d" % i, host="web.local")
        assert r.status == 200, r.summary()
    assert be.connections == 6, "protocol.keepAlive=false: expected one backend connection per request, got %d" \
        % be.connections


def test_websocket_tunnel(env):
    be, fg = _setup(env, Reply(websocket=True, ws_greeting=b"\x81\x05hello"))
    with RawClient(fg.port) as c:
        c.send(b"GET /chat HTTP/1.1\r\nHost: web.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = c.read_response()
        assert r.status == 101, "expected 101 Switching Protocols: %s" % r.summary()
        assert (r.header("Upgrade") or "").lower() == "websocket", r.summary()
        assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", r.summary()
        assert c.read_exactly(7, timeout=5) == b"\x81\x05hello", "server-to-client bytes not tunnelled"
        sent = b""
        for n in (1, 100, 70000):
            frame = os.urandom(n)
            c.send(frame)
            sent += frame
            echo = c.read_exactly(n, timeout=10)
            assert echo == frame, "client-to-server-to-client echo of %d bytes corrupted" % n
    q = be.requests[-1]
    assert (q.header("Upgrade") or "").lower() == "websocket", "Upgrade: websocket must be forwarded: %r" % q.head
    assert "upgrade" in (q.header("Connection") or "").lower(), "Connection: Upgrade must be forwarded: %r" % q.head
    assert be.ws_data == sent


# ---------------------------------------------------------------- release only

def _curl_result(p):
    out = p.stdout.decode("ascii", "replace").strip().split()
    assert p.returncode == 0 and len(out) == 2, "curl failed (%d): %s %s" % (p.returncode, p.stdout, p.stderr)
    return int(out[0]), int(float(out[1]))


@release_only
def test_download_1gib_bounded_memory(env):
    ng = env.nginx("static", name="big", big_file=GiB)
    fg = env.farmgated(one_farm_config([ng.port]))
    with RssSampler(fg) as s:
        p = curl(["-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", "Host: web.local",
                  fg.url("/big.bin")], timeout=240)
    code, size = _curl_result(p)
    assert code == 200 and size == GiB, "download: status %d, %d bytes (expected %d)" % (code, size, GiB)
    s.assert_below(RSS_LIMIT_KB, "the 1 GiB download")


@release_only
def test_download_backpressure_slow_client(env):
    """A client that does not read must not make farmgated buffer the body."""
    ng = env.nginx("static", name="big", big_file=GiB)
    fg = env.farmgated(one_farm_config([ng.port]))
    s = socket.create_connection(("127.0.0.1", fg.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: web.local\r\nConnection: close\r\n\r\n")
        with RssSampler(fg) as sm:
            time.sleep(3)  # read nothing while nginx pushes as fast as it can
            stalled_max = sm.max_kb
            total = 0
            buf = bytearray(1 << 20)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                r, _, _ = select.select([s], [], [], 30)
                assert r, "download stalled after %d bytes" % total
                n = s.recv_into(buf)
                if n == 0:
                    break
                total += n
    finally:
        s.close()
    assert 0 < stalled_max < RSS_LIMIT_KB, "farmgated buffered the body for a stalled client: VmRSS %d kB" % stalled_max
    sm.assert_below(RSS_LIMIT_KB, "the slow-client download")
    assert total > GiB, "client received %d bytes, expected head + %d" % (total, GiB)


def _sink(env):
    def handler(req):
        return Reply(200, b"received=%d" % req.body_len)
    be = env.backend(handler, name="sink", store_bodies=False)
    fg = env.farmgated(one_farm_config([be.port]))
    return be, fg


@release_only
def test_upload_1gib_content_length_bounded_memory(env):
    be, fg = _sink(env)
    src = env.path("upload.bin")
    with open(src, "wb") as f:
        f.truncate(GiB)  # sparse
    with RssSampler(fg) as s:
        p = curl(["-T", src, "-o", env.path("up.out"), "-w", "%{http_code} %{size_upload}",
                  "-H", "Host: web.local", fg.url("/upload")], timeout=240)
    code, size = _curl_result(p)
    assert code == 200 and size == GiB, "upload: status %d, curl sent %d bytes" % (code, size)
    q = be.requests[-1]
    assert q.body_len == GiB and q.header("Content-Length") == str(GiB), \
        "backend received %d bytes, headers %r" % (q.body_len, q.head)
    assert open(env.path("up.out"), "rb").read() == b"received=%d" % GiB
    s.assert_below(RSS_LIMIT_KB, "the 1 GiB Content-Length upload")


@release_only
def test_upload_1gib_chunked_bounded_memory(env):
    be, fg = _sink(env)
    cmd = "head -c %d /dev/zero | %s -sS --noproxy '*' --max-time 240 -T - -o %s -w '%%{http_code}' " \
          "-H 'Host: web.local' %s" % (GiB, CURL, env.path("up.out"), fg.url("/upload"))
    with RssSampler(fg) as s:
        p = subprocess.run(cmd, shell=True, capture_output=True, timeout=260, env=_clean_env())
    assert p.returncode == 0 and p.stdout.strip() == b"200", "curl: %r %r" % (p.stdout, p.stderr)
    q = be.requests[-1]
    assert q.chunked, "upstream upload should stay chunked: %r" % q.head
    assert q.body_len == GiB, "backend received %d bytes of %d" % (q.body_len, GiB)
    s.assert_below(RSS_LIMIT_KB, "the 1 GiB chunked upload")
