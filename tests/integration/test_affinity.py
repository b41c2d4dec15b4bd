"""Cookie-based client affinity (ARRAffinity)."""

import re

from harness import http_request, one_farm_config, Reply, server

AFF_RX = r"^%s=([0-9A-Fa-f]{16}); Path=/; Max-Age=%d; HttpOnly$"


def _backends(env, handler_a=None, handler_b=None):
    a = env.backend(handler_a, name="A")
    b = env.backend(handler_b, name="B")
    return a, b


def _aff_cookies(r, name="ARRAffinity"):
    return [v for v in r.header_all("Set-Cookie") if v.startswith(name + "=")]


def _cookie_for(fg, name="ARRAffinity", want=None, tries=10, target="/"):
    """Requests without a cookie until the response comes from backend `want`
    (any if None); returns (backend name, cookie value)."""
    for _ in range(tries):
        r = http_request(fg.port, "GET", target, host="web.local")
        assert r.status == 200, r.summary()
        cs = _aff_cookies(r, name)
        assert len(cs) == 1, "expected one %s Set-Cookie: %s" % (name, r.summary())
        value = cs[0].split(";", 1)[0].split("=", 1)[1]
        if want is None or r.header("X-Backend") == want:
            return r.header("X-Backend"), value
    raise AssertionError("never reached backend %s in %d requests" % (want, tries))


def test_affinity_cookie_format(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port], affinity={"useCookie": True}))
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 200, r.summary()
    cs = _aff_cookies(r)
    assert len(cs) == 1, "expected exactly one ARRAffinity Set-Cookie: %s" % r.summary()
    assert re.match(AFF_RX % ("ARRAffinity", 1200), cs[0]), \
        "Set-Cookie must be 'ARRAffinity=<16 hex>; Path=/; Max-Age=1200; HttpOnly', got %r" % cs[0]


def test_affinity_sticks_to_server(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port], affinity={"useCookie": True}))
    for want in ("A", "B"):
        got, value = _cookie_for(fg, want=want)
        for i in range(12):
            cookie = "ARRAffinity=%s" % value if i % 2 == 0 else "x=1; ARRAffinity=%s; y=2" % value
            r = http_request(fg.port, "GET", "/s/%d" % i, host="web.local", headers=[("Cookie", cookie)])
            assert r.status == 200, r.summary()
            assert r.header("X-Backend") == want, \
                "request %d with the cookie of server %s went to %s (round robin would alternate)" % (
                    i, want, r.header("X-Backend"))
    # without the cookie round robin alternates again
    seen = {http_request(fg.port, "GET", "/", host="web.local").header("X-Backend") for _ in range(4)}
    assert seen == {"A", "B"}, "without cookie both servers should be used: %s" % seen


def test_affinity_overrides_algorithm(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port], affinity={"useCookie": True},
                                       loadBalancing={"algorithm": "RequestHash", "queryStringNames": ["user"]}))
    # find, for each server, a user hashed to it and its cookie
    by_server = {}
    for i in range(40):
        r = http_request(fg.port, "GET", "/?user=u%d" % i, host="web.local")
        assert r.status == 200, r.summary()
        srv = r.header("X-Backend")
        if srv not in by_server:
            by_server[srv] = ("u%d" % i, _aff_cookies(r)[0].split(";")[0])
        if len(by_server) == 2:
            break
    assert len(by_server) == 2, "RequestHash over 40 users used only %s" % list(by_server)
    user_a, _ = by_server["A"]
    _, cookie_b = by_server["B"]
    for _ in range(5):
        r = http_request(fg.port, "GET", "/?user=%s" % user_a, host="web.local", headers=[("Cookie", cookie_b)])
        assert r.header("X-Backend") == "B", \
            "the affinity cookie of B must win over RequestHash (user %s hashes to A): %s" % (user_a, r.summary())


def test_affinity_custom_name_and_timeout(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port],
                                       affinity={"useCookie": True, "cookieName": "StickyFG", "timeout": "00:05:00"}))
    r = http_request(fg.port, "GET", "/", host="web.local")
    cs = _aff_cookies(r, "StickyFG")
    assert len(cs) == 1 and re.match(AFF_RX % ("StickyFG", 300), cs[0]), \
        "expected 'StickyFG=<16 hex>; Path=/; Max-Age=300; HttpOnly': %s" % r.summary()
    assert not _aff_cookies(r), "ARRAffinity must not be set when renamed: %s" % r.summary()
    got, value = _cookie_for(fg, name="StickyFG", want="B")
    for _ in range(4):
        r = http_request(fg.port, "GET", "/", host="web.local", headers=[("Cookie", "StickyFG=" + value)])
        assert r.header("X-Backend") == "B", r.summary()


def test_backend_can_disable_affinity(env):
    rep = Reply(200, b"no-aff", headers=[("Arr-Disable-Session-Affinity", "true"), ("Set-Cookie", "sid=42; Path=/")])
    a = env.backend(rep, name="A")
    fg = env.farmgated(one_farm_config([a.port], affinity={"useCookie": True}))
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 200 and r.body == b"no-aff", r.summary()
    assert not _aff_cookies(r), "Arr-Disable-Session-Affinity: true must suppress the cookie: %s" % r.summary()
    assert not r.has("Arr-Disable-Session-Affinity"), "that header must not reach the client: %s" % r.summary()
    assert r.header_all("Set-Cookie") == ["sid=42; Path=/"], "the backend's own cookie must pass: %s" % r.summary()


def test_no_affinity_cookie_by_default(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port]))
    for _ in range(3):
        r = http_request(fg.port, "GET", "/", host="web.local")
        assert r.status == 200 and not _aff_cookies(r), "useCookie defaults to false: %s" % r.summary()


def test_unknown_affinity_cookie_gets_fresh_one(env):
    a, b = _backends(env)
    fg = env.farmgated(one_farm_config([a.port, b.port], affinity={"useCookie": True}))
    for bogus in ("0000000000000000", "nothex!", "x" * 300):
        r = http_request(fg.port, "GET", "/", host="web.local", headers=[("Cookie", "ARRAffinity=" + bogus)])
        assert r.status == 200, "bogus affinity cookie %r: %s" % (bogus[:20], r.summary())
        cs = _aff_cookies(r)
        assert len(cs) == 1 and re.match(AFF_RX % ("ARRAffinity", 1200), cs[0]), \
            "a fresh valid cookie must replace %r: %s" % (bogus[:20], r.summary())
        assert bogus not in cs[0]


def test_affinity_to_disabled_server_moves(env):
    a, b = _backends(env)
    cfg = one_farm_config([a.port, b.port], affinity={"useCookie": True})
    fg = env.farmgated(cfg)
    _, value = _cookie_for(fg, want="A")
    cfg2 = one_farm_config([server(a.port, enabled=False), b.port], affinity={"useCookie": True})
    ok, line = fg.reload(cfg2)
    assert ok, line
    r = http_request(fg.port, "GET", "/", host="web.local", headers=[("Cookie", "ARRAffinity=" + value)])
    assert r.status == 200 and r.header("X-Backend") == "B", \
        "a cookie for a disabled server must fall back to another server: %s" % r.summary()
    cs = _aff_cookies(r)
    assert len(cs) == 1 and value not in cs[0], "a new cookie for B expected: %s" % r.summary()
