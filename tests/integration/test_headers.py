"""Request and response header handling: Host, X-Forwarded-For/-Proto,
hop-by-hop removal, X-Powered-By, reverse host rewrite, pass-through."""

from harness import (farm, make_config, one_farm_config, arr_lb_rule, RawClient, Reply,
                     server)

HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade")


def _setup(env, handler=None, server_kw=None, **farm_kw):
    be = env.backend(handler, name="B")
    fg = env.farmgated(one_farm_config([server(be.port, **(server_kw or {}))], **farm_kw))
    return be, fg


def _get(fg, headers=(), target="/", host="web.local", method="GET", body=None):
    with RawClient(fg.port) as c:
        c.request(method, target, host=host, headers=list(headers) + [("Connection", "close")], body=body)
        r = c.read_response(head=(method == "HEAD"))
        return r, c.local_port


def test_x_forwarded_for_appends_client_with_port(env):
    be, fg = _setup(env)
    r, p = _get(fg)
    assert r.status == 200, r.summary()
    assert be.requests[-1].header_all("X-Forwarded-For") == ["127.0.0.1:%d" % p], \
        "XFF without client value: %r" % be.requests[-1].head
    r, p = _get(fg, [("X-Forwarded-For", "10.0.0.1, 10.0.0.2")])
    assert be.requests[-1].header_all("X-Forwarded-For") == ["10.0.0.1, 10.0.0.2, 127.0.0.1:%d" % p], \
        "XFF must append ', 127.0.0.1:<client port>' to the client's value: %r" % be.requests[-1].head


def test_x_forwarded_for_without_port(env):
    be, fg = _setup(env, protocol={"includePortInXForwardedFor": False})
    _get(fg)
    assert be.requests[-1].header_all("X-Forwarded-For") == ["127.0.0.1"], be.requests[-1].head
    _get(fg, [("X-Forwarded-For", "10.9.8.7")])
    assert be.requests[-1].header_all("X-Forwarded-For") == ["10.9.8.7, 127.0.0.1"], be.requests[-1].head


def test_x_forwarded_for_custom_name(env):
    be, fg = _setup(env, protocol={"xForwardedForHeaderName": "X-Client-Addr"})
    r, p = _get(fg, [("X-Client-Addr", "1.1.1.1")])
    q = be.requests[-1]
    assert q.header_all("X-Client-Addr") == ["1.1.1.1, 127.0.0.1:%d" % p], q.head
    assert not q.has("X-Forwarded-For"), "the default XFF name must not be added when renamed: %r" % q.head


def test_x_forwarded_for_disabled(env):
    be, fg = _setup(env, protocol={"xForwardedForHeaderName": ""})
    r, p = _get(fg)
    assert r.status == 200
    q = be.requests[-1]
    assert not q.has("X-Forwarded-For"), "xForwardedForHeaderName='' must not send XFF: %r" % q.head
    assert ("127.0.0.1:%d" % p).encode() not in q.head, q.head


def test_x_forwarded_proto_replaced(env):
    be, fg = _setup(env)
    _get(fg, [("X-Forwarded-Proto", "https")])
    assert be.requests[-1].header_all("X-Forwarded-Proto") == ["http"], \
        "X-Forwarded-Proto must be replaced by http: %r" % be.requests[-1].head
    _get(fg)
    assert be.requests[-1].header_all("X-Forwarded-Proto") == ["http"], be.requests[-1].head


def test_request_hop_by_hop_removed(env):
    be, fg = _setup(env)
    with RawClient(fg.port) as c:
        c.send(b"GET /hop HTTP/1.1\r\nHost: web.local\r\n"
               b"Connection: keep-alive, X-Drop-Me, Upgrade\r\n"
               b"Keep-Alive: timeout=5, max=1000\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\n"
               b"Trailer: X-Checksum\r\nUpgrade: h2c\r\nX-Drop-Me: secret\r\nX-Keep-Me: yes\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r.summary()
    q = be.requests[-1]
    names = q.header_names()
    for h in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-drop-me"):
        assert h not in names, "hop-by-hop request header %r was forwarded: %r" % (h, q.head)
    conn = (q.header("Connection") or "").lower()
    assert "x-drop-me" not in conn and "upgrade" not in conn, "client Connection tokens forwarded: %r" % q.head
    assert q.header("X-Keep-Me") == "yes", "end-to-end header lost: %r" % q.head
    assert q.header_all("Host") == ["web.local"], q.head


def test_host_preserved_by_default(env):
    be, fg = _setup(env, server_kw={"hostName": "app.internal"})
    _get(fg, host="Web.Local")
    assert be.requests[-1].header_all("Host") == ["Web.Local"], \
        "preserveHostHeader (default true) must pass the client's Host: %r" % be.requests[-1].head


def test_host_from_hostname_when_not_preserved(env):
    be, fg = _setup(env, server_kw={"hostName": "app.internal"}, protocol={"preserveHostHeader": False})
    _get(fg)
    assert be.requests[-1].header_all("Host") == ["app.internal"], \
        "preserveHostHeader=false must send the server's hostName: %r" % be.requests[-1].head


def test_host_from_address_when_no_hostname(env):
    be, fg = _setup(env, protocol={"preserveHostHeader": False})
    _get(fg)
    assert be.requests[-1].header_all("Host") == ["127.0.0.1:%d" % be.port], \
        "preserveHostHeader=false without hostName must send address:port: %r" % be.requests[-1].head


def test_x_powered_by_arr(env):
    be, fg = _setup(env)
    r, _ = _get(fg)
    assert r.header_all("X-Powered-By") == ["ARR/3.0"], "expected X-Powered-By: ARR/3.0: %s" % r.summary()
    be2 = env.backend(name="B2")
    fg2 = env.farmgated(one_farm_config([be2.port], protocol={"arrResponseHeader": False}))
    r, _ = _get(fg2)
    assert r.status == 200
    assert "ARR/3.0" not in [v for v in r.header_all("X-Powered-By")], \
        "arrResponseHeader=false must not add X-Powered-By: %s" % r.summary()


def test_response_hop_by_hop_removed(env):
    reply = Reply(200, b"hello", headers=[("Connection", "keep-alive, X-Secret-Hop"),
                                          ("Keep-Alive", "timeout=77, max=5"), ("X-Secret-Hop", "1"),
                                          ("Proxy-Connection", "keep-alive"), ("Upgrade", "h2c"),
                                          ("X-Normal", "yes")])
    be, fg = _setup(env, reply)
    r, _ = _get(fg)
    assert r.status == 200 and r.body == b"hello", r.summary()
    names = [k.lower() for k, _ in r.headers]
    for h in ("x-secret-hop", "proxy-connection", "upgrade"):
        assert h not in names, "hop-by-hop response header %r passed to the client: %s" % (h, r.summary())
    assert "timeout=77, max=5" not in r.header_all("Keep-Alive"), "backend Keep-Alive passed: %s" % r.summary()
    assert "x-secret-hop" not in (r.header("Connection") or "").lower(), r.summary()
    assert r.header("X-Normal") == "yes", r.summary()


def test_expect_header_not_forwarded(env):
    be, fg = _setup(env)
    with RawClient(fg.port) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: web.local\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
               b"Connection: close\r\n\r\n")
        c.read_interim(timeout=5)
        c.send(b"data")
        r = c.read_response()
    assert r.status == 200, r.summary()
    q = be.requests[-1]
    assert not q.has("Expect"), "Expect must not be forwarded: %r" % q.head
    assert q.decoded == b"data", q


def test_interim_responses_relayed_to_http11_clients(env):
    """RFC 9110 15.2: a proxy forwards 1xx responses. 103 Early Hints and 102 Processing reach
    an HTTP/1.1 client, in order, with their end-to-end fields and without hop-by-hop ones or
    anything of farmgated's; 100 Continue does not (farmgated answers Expect itself and does
    not forward it); an HTTP/1.0 client gets no 1xx at all (it would not understand one)."""
    reply = Reply(200, b"final", headers=[("Set-Cookie", "s=1")], interim=[
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
        b"Link: </app.js>; rel=preload; as=script\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=9\r\n\r\n"])
    be, fg = _setup(env, reply, protocol={"arrResponseHeader": True},
                    affinity={"useCookie": True})
    r, _ = _get(fg)
    assert r.status == 200 and r.body == b"final", r.summary()
    got = [(i.status, [(k.lower(), v) for k, v in i.headers]) for i in r.interim]
    assert got == [(102, []), (103, [("link", "</style.css>; rel=preload; as=style"),
                                     ("link", "</app.js>; rel=preload; as=script")])], \
        "interim responses the client got: %r" % got
    assert r.header("X-Powered-By") and r.header_all("Set-Cookie")[-1].startswith("ARRAffinity"), \
        "farmgated's own fields belong to the final response: %s" % r.summary()
    with RawClient(fg.port) as c:
        c.request("GET", "/", host="web.local", version="HTTP/1.0")
        r = c.read_response()
    assert r.status == 200 and r.body == b"final" and not r.interim, \
        "an HTTP/1.0 client must get the final response only: %s %r" % (r.summary(), r.interim)
    assert len(be.requests) == 2


def test_client_cannot_inject_arr_clientcert(env):
    be, fg = _setup(env)
    _get(fg, [("X-ARR-ClientCert", "Zm9yZ2VkIGNlcnQ="), ("X-Other", "kept")])
    q = be.requests[-1]
    assert not q.has("X-ARR-ClientCert"), "inbound X-ARR-ClientCert must always be stripped: %r" % q.head
    assert q.header("X-Other") == "kept"


def test_end_to_end_headers_unchanged(env):
    reply = Reply(200, b"ok", headers=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/x"),
                                      ("X-Multi", "one"), ("X-Multi", "two"), ("Cache-Control", "no-store")])
    be, fg = _setup(env, reply)
    r, _ = _get(fg, [("Authorization", "Basic dXNlcjpwYXNz"), ("Cookie", "k=v; k2=v2"), ("X-Dup", "1"),
                     ("X-Dup", "2"), ("User-Agent", "farmgate-test/1.0"), ("Accept", "*/*")])
    q = be.requests[-1]
    assert q.header("Authorization") == "Basic dXNlcjpwYXNz", q.head
    assert q.header("Cookie") == "k=v; k2=v2", q.head
    assert q.header_all("X-Dup") == ["1", "2"] or q.header_all("X-Dup") == ["1, 2"], q.head
    assert q.header("User-Agent") == "farmgate-test/1.0", q.head
    assert r.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/x"], \
        "Set-Cookie lines must be passed one by one, unmerged: %s" % r.summary()
    assert r.header_all("X-Multi") in (["one", "two"], ["one, two"]), r.summary()
    assert r.header("Cache-Control") == "no-store", r.summary()


def test_reverse_rewrite_host_in_location(env):
    def handler(req):
        if req.target.startswith("/login"):
            return Reply(302, b"", headers=[("Location", "http://app.internal/welcome?x=1"),
                                            ("Content-Location", "http://app.internal/c")])
        return Reply(302, b"", headers=[("Location", "http://elsewhere.example/x")])
    be = env.backend(handler, name="B")
    proto = {"preserveHostHeader": False}
    cfg = make_config(
        farms=[farm("rw", [server(be.port, hostName="app.internal")],
                    protocol=dict(proto, reverseRewriteHostInResponseHeaders=True)),
               farm("norw", [server(be.port, hostName="app.internal")], protocol=proto)],
        rules=[arr_lb_rule("rw", "front.local"), arr_lb_rule("norw", "plain.local")])
    fg = env.farmgated(cfg)
    r, _ = _get(fg, target="/login", host="front.local")
    assert r.status == 302, r.summary()
    assert r.header("Location") == "http://front.local/welcome?x=1", \
        "Location pointing at the backend host must be rewritten to the client's Host: %s" % r.summary()
    assert r.header("Content-Location") == "http://front.local/c", r.summary()
    r, _ = _get(fg, target="/other", host="front.local")
    assert r.header("Location") == "http://elsewhere.example/x", "foreign Location must stay: %s" % r.summary()
    r, _ = _get(fg, target="/login", host="plain.local")
    assert r.header("Location") == "http://app.internal/welcome?x=1", \
        "without reverseRewriteHostInResponseHeaders the Location must stay: %s" % r.summary()


def test_head_request_forwarded_as_head(env):
    be, fg = _setup(env, Reply(200, b"x" * 1234, headers=[("X-H", "1")]))
    r, _ = _get(fg, method="HEAD")
    assert r.status == 200 and r.header("X-H") == "1", r.summary()
    assert be.requests[-1].method == "HEAD", be.requests[-1].head
