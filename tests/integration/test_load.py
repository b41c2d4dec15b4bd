"""Sustained load through farmgated with wrk (release build only)."""

import time

from harness import one_farm_config, release_only, RssSampler, server, wrk

RSS_LIMIT_KB = 32768


@release_only
def test_wrk_keepalive_load_no_errors(env):
    a = env.nginx("echo", name="A")
    b = env.nginx("echo", name="B")
    # log.access off: 30 s of full-speed access lines would only measure the log file
    fg = env.farmgated(one_farm_config([server(a.port), server(b.port)], host="load.local",
                                       config={"log": {"access": "off"}}))
    with RssSampler(fg, interval=0.5) as s:
        out, res = wrk(fg.url("/load?x=1"), threads=2, connections=64, duration="30s",
                       headers=["Host: load.local"], timeout=90)
    fg.assert_alive()
    assert res["returncode"] == 0, "wrk failed:\n" + out
    assert res["requests"] and res["requests"] > 1000, "wrk made too few requests:\n" + out
    errs = res["socket_errors"]
    assert sum(errs.values()) == 0, "wrk socket errors %s:\n%s" % (errs, out)
    assert res["non2xx"] == 0, "wrk got %d non-2xx/3xx responses:\n%s" % (res["non2xx"], out)
    s.assert_below(RSS_LIMIT_KB, "wrk with 64 connections")
    # both backends were used (nginx closes upstream keep-alive every 1000 requests: farmgated must cope)
    na, nb = len(a.access_lines()), len(b.access_lines())
    assert na > 0 and nb > 0, "backends saw A=%d B=%d requests" % (na, nb)
    assert abs(na - nb) <= max(64, 0.02 * (na + nb)), "round robin uneven under load: A=%d B=%d" % (na, nb)


@release_only
def test_wrk_new_connection_per_request(env):
    """Connection: close on every request: accept/close churn without errors."""
    a = env.nginx("echo", name="A")
    fg = env.farmgated(one_farm_config([a.port], host="load.local", config={"log": {"access": "off"}}))
    out, res = wrk(fg.url("/"), threads=2, connections=16, duration="5s",
                   headers=["Host: load.local", "Connection: close"], timeout=60)
    fg.assert_alive()
    assert res["requests"] and res["requests"] > 200, "too few requests:\n" + out
    errs = res["socket_errors"]
    # (nginx itself gives zero socket errors in this mode)
    assert sum(errs.values()) == 0, "socket errors %s:\n%s" % (errs, out)
    assert res["non2xx"] == 0, out
    time.sleep(0.5)
    fds = fg.open_fds()
    assert fds < 100, "farmgated holds %d fds after the churn (leak?)" % fds
