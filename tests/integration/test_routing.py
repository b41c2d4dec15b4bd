"""Routing like ARR + URL Rewrite: Host rules to farms, 404/503, rewrite,
redirect, custom response, abort, upstream request form, access log."""

import re

from harness import (arr_lb_rule, farm, http_request, make_config, one_farm_config, raw_request,
                     parse_responses, RawClient, server, wait_for)


def _two_farms(env):
    a = env.nginx("echo", name="A")
    b = env.nginx("echo", name="B")
    cfg = make_config(farms=[farm("alpha", [server(a.port)]), farm("beta", [server(b.port)])],
                      rules=[arr_lb_rule("alpha", "alpha.local"), arr_lb_rule("beta", "beta.local")])
    return a, b, env.farmgated(cfg)


def test_host_selects_farm(env):
    a, b, fg = _two_farms(env)
    for host, want in [("alpha.local", "A"), ("beta.local", "B"), ("ALPHA.Local", "A"),
                       ("beta.local", "B")]:
        r = http_request(fg.port, "GET", "/path/x?q=1&r=2", host=host)
        assert r.status == 200, "Host %s: expected 200 from nginx %s, got %s" % (host, want, r.summary())
        assert ("server=%s " % want) in r.text, "Host %s should route to farm of nginx %s: %r" % (host, want, r.text)
        assert "uri=/path/x?q=1&r=2 " in r.text, "URL and query must reach the backend unchanged: %r" % r.text
        assert ("host=%s " % host.lower()) in r.text, "Host must be preserved by default: %r" % r.text
    # nginx logs a request after answering it: give the last line a moment
    wait_for(lambda: len(a.access_lines()) >= 2 and len(b.access_lines()) >= 2, 5,
             msg="both access logs")
    assert len(a.access_lines()) == 2 and len(b.access_lines()) == 2, \
        "each nginx should have seen exactly 2 requests: A=%s B=%s" % (a.access_lines(), b.access_lines())


def test_no_matching_rule_is_404(env):
    a, b, fg = _two_farms(env)
    for host in ("gamma.local", "alpha.local.evil", "xalpha.local"):
        r = http_request(fg.port, "GET", "/", host=host)
        assert r.status == 404, "Host %s matches no rule: expected 404, got %s" % (host, r.summary())
    assert a.access_lines() == [] and b.access_lines() == [], "no backend may be contacted for a 404"


def test_wildcard_host_pattern(env):
    be = env.backend()
    cfg = make_config(farms=[farm("wild", [server(be.port)])], rules=[arr_lb_rule("wild", "*.wild.local")])
    fg = env.farmgated(cfg)
    for host in ("a.wild.local", "b.c.wild.local"):
        r = http_request(fg.port, "GET", "/w", host=host)
        assert r.status == 200, "Host %s should match *.wild.local: %s" % (host, r.summary())
    r = http_request(fg.port, "GET", "/w", host="wild.local")
    assert r.status == 404, "Host wild.local must not match *.wild.local: %s" % r.summary()
    assert be.count == 2


def test_farm_disabled_is_503(env):
    be = env.backend()
    fg = env.farmgated(one_farm_config([be.port], enabled=False))
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 503, "farm enabled=false: expected 503, got %s" % r.summary()
    assert be.count == 0, "a disabled farm's server was contacted: %r" % be.requests


def test_all_servers_disabled_is_503(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(one_farm_config([server(a.port, enabled=False), server(b.port, enabled=False)]))
    for _ in range(3):
        r = http_request(fg.port, "GET", "/", host="web.local")
        assert r.status == 503, "all servers disabled: expected 503, got %s" % r.summary()
    assert a.count == 0 and b.count == 0, "disabled servers were contacted"


def test_rewrite_to_farm_with_path(env):
    be = env.backend()
    cfg = make_config(
        farms=[farm("api", [server(be.port)])],
        rules=[
            {"name": "api-v2", "stopProcessing": True, "match": {"url": "^api/(.*)"},
             "conditions": [{"input": "{HTTP_HOST}", "pattern": "^api\\.local$"}],
             "action": {"type": "Rewrite", "url": "http://api/v2/{R:1}"}},
            {"name": "api-noqs", "stopProcessing": True, "match": {"url": "^noqs/(.*)"},
             "conditions": [{"input": "{HTTP_HOST}", "pattern": "^api\\.local$"}],
             "action": {"type": "Rewrite", "url": "http://api/plain/{R:1}", "appendQueryString": False}},
        ])
    fg = env.farmgated(cfg)
    r = http_request(fg.port, "GET", "/api/users/7?id=7&x=y", host="api.local")
    assert r.status == 200, r.summary()
    assert be.requests[-1].target == "/v2/users/7?id=7&x=y", \
        "Rewrite http://api/v2/{R:1} (query appended): backend got %r" % be.requests[-1].target
    r = http_request(fg.port, "GET", "/noqs/a/b?drop=1", host="api.local")
    assert r.status == 200, r.summary()
    assert be.requests[-1].target == "/plain/a/b", \
        "appendQueryString=false must drop the query: backend got %r" % be.requests[-1].target
    r = http_request(fg.port, "GET", "/other", host="api.local")
    assert r.status == 404, "no rule matches /other: %s" % r.summary()


def test_path_rewrite_then_farm_rule(env):
    """A path-only Rewrite (no stopProcessing) changes the URL the next rule sees."""
    be = env.backend()
    cfg = make_config(
        farms=[farm("web", [server(be.port)])],
        rules=[
            {"name": "old-to-new", "match": {"url": "^old/(.*)"},
             "action": {"type": "Rewrite", "url": "/new/{R:1}"}},
            arr_lb_rule("web", "web.local"),
        ])
    fg = env.farmgated(cfg)
    r = http_request(fg.port, "GET", "/old/page.html?k=v", host="web.local")
    assert r.status == 200, r.summary()
    assert be.requests[-1].target == "/new/page.html?k=v", \
        "rewritten path must reach the farm: backend got %r" % be.requests[-1].target
    r = http_request(fg.port, "GET", "/untouched", host="web.local")
    assert be.requests[-1].target == "/untouched", be.requests[-1].target


def test_redirect_actions(env):
    cond = [{"input": "{HTTP_HOST}", "pattern": "^redir\\.local$"}]
    rules = []
    for prefix, rtype in (("p", None), ("f", "Found"), ("s", "SeeOther"), ("t", "Temporary")):
        act = {"type": "Redirect", "url": "http://new.example/%s/{R:1}" % prefix}
        if rtype:
            act["redirectType"] = rtype
        rules.append({"name": "r-" + prefix, "stopProcessing": True, "match": {"url": "^%s/(.*)" % prefix},
                      "conditions": cond, "action": act})
    rules.append({"name": "r-noqs", "stopProcessing": True, "match": {"url": "^n/(.*)"}, "conditions": cond,
                  "action": {"type": "Redirect", "url": "http://new.example/n/{R:1}",
                             "appendQueryString": False, "redirectType": "Found"}})
    fg = env.farmgated(make_config(rules=rules))
    for prefix, code in (("p", 301), ("f", 302), ("s", 303), ("t", 307)):
        r = http_request(fg.port, "GET", "/%s/page?x=1" % prefix, host="redir.local")
        assert r.status == code, "/%s/...: expected %d, got %s" % (prefix, code, r.summary())
        assert r.header("Location") == "http://new.example/%s/page?x=1" % prefix, \
            "Location (query appended) wrong: %s" % r.summary()
    r = http_request(fg.port, "GET", "/n/page?x=1", host="redir.local")
    assert r.status == 302 and r.header("Location") == "http://new.example/n/page", \
        "appendQueryString=false: %s" % r.summary()


def test_custom_response(env):
    rules = [{"name": "deny", "stopProcessing": True, "match": {"url": "^secret"},
              "action": {"type": "CustomResponse", "statusCode": 403, "statusReason": "Denied By Rule",
                         "statusDescription": "blocked by farmgate rule"}}]
    fg = env.farmgated(make_config(rules=rules))
    r = http_request(fg.port, "GET", "/secret/x", host="any.local")
    assert r.status == 403, r.summary()
    assert r.reason == "Denied By Rule", "statusReason must be the reason phrase: %r" % r.reason
    assert b"blocked by farmgate rule" in r.body, "statusDescription should be in the body: %r" % r.body


def test_abort_request_closes_without_response(env):
    be = env.backend()
    rules = [{"name": "abort", "stopProcessing": True, "match": {"url": "^kill"},
              "action": {"type": "AbortRequest"}}, arr_lb_rule("web", "web.local")]
    fg = env.farmgated(make_config(farms=[farm("web", [server(be.port)])], rules=rules))
    data = raw_request(fg.port, b"GET /kill/me HTTP/1.1\r\nHost: web.local\r\n\r\n", read_timeout=5)
    assert data == b"", "AbortRequest must close the connection with no response, got %r" % data[:300]
    assert be.count == 0
    # the daemon still serves other requests
    r = http_request(fg.port, "GET", "/ok", host="web.local")
    assert r.status == 200, r.summary()


def test_upstream_is_http11_origin_form(env):
    be = env.backend()
    fg = env.farmgated(one_farm_config([be.port]))
    # absolute-form target from the client
    data = raw_request(fg.port, b"GET http://web.local/abs/p?x=1 HTTP/1.1\r\nHost: web.local\r\n"
                                b"Connection: close\r\n\r\n")
    rs = parse_responses(data)
    assert rs and rs[0].status == 200, "absolute-form request: %r" % data[:300]
    q = be.requests[-1]
    assert q.target == "/abs/p?x=1", "upstream target must be origin-form, got %r" % q.target
    assert q.version == "HTTP/1.1", q.head
    # HTTP/1.0 client
    data = raw_request(fg.port, b"GET /ten HTTP/1.0\r\nHost: web.local\r\n\r\n")
    rs = parse_responses(data)
    assert rs and rs[0].status == 200 and rs[0].complete, "HTTP/1.0 request: %r" % data[:300]
    q = be.requests[-1]
    assert q.head.startswith(b"GET /ten HTTP/1.1\r\n"), "upstream request must be HTTP/1.1: %r" % q.head
    assert q.header_all("Host") == ["web.local"], "exactly one Host header expected: %r" % q.head


def test_access_log_line(env):
    be = env.backend()
    fg = env.farmgated(one_farm_config([be.port]))
    mark = fg.log_mark()
    with RawClient(fg.port) as c:
        c.request("GET", "/logged/path?a=1", host="web.local", headers=[("Connection", "close")])
        r = c.read_response()
        cport = c.local_port
    assert r.status == 200
    line = fg.wait_log(r"access:.*/logged/path", timeout=5, since=mark)
    for piece in ("127.0.0.1", "web.local", "GET /logged/path?a=1 HTTP/1.1", " 200", "farm=web",
                  "server=127.0.0.1:%d" % be.port):
        assert piece in line, "access log line lacks %r: %r" % (piece, line)
    assert re.search(r"127\.0\.0\.1(:%d)?" % cport, line)
    # a 404 is logged too
    mark = fg.log_mark()
    http_request(fg.port, "GET", "/nofarm", host="nobody.local")
    line = fg.wait_log(r"access:.*/nofarm", timeout=5, since=mark)
    assert " 404" in line, "404 access line: %r" % line
    assert len(fg.access_lines(mark)) == 1, "exactly one access line per request: %r" % fg.access_lines(mark)
