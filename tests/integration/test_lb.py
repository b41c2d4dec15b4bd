"""Load-balancing algorithms."""

import collections
import threading
import time

from harness import http_request, one_farm_config, RawClient, Reply, server


def _names(results):
    return collections.Counter(results)


def test_weighted_round_robin_exact(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(one_farm_config([server(a.port, weight=2), server(b.port, weight=1)]))
    seq = []
    for i in range(300):
        r = http_request(fg.port, "GET", "/%d" % i, host="web.local")
        assert r.status == 200, "request %d: %s" % (i, r.summary())
        seq.append(r.header("X-Backend"))
    c = _names(seq)
    assert c["A"] == 200 and c["B"] == 100, "weights 2:1 over 300 requests must give exactly 200/100, got %s" % dict(c)
    assert a.count == 200 and b.count == 100, (a.count, b.count)
    for i in range(0, 300, 30):
        cb = _names(seq[i:i + 30])
        assert cb["A"] == 20 and cb["B"] == 10, \
            "WRR must be exact over every cycle; requests %d..%d gave %s" % (i, i + 29, dict(cb))


def test_round_robin_equal_weights_keepalive(env):
    """Balancing is per request, also on one keep-alive client connection."""
    bes = [env.backend(name=n) for n in ("A", "B", "C")]
    fg = env.farmgated(one_farm_config([b.port for b in bes]))
    seq = []
    with RawClient(fg.port) as c:
        for i in range(90):
            c.request("GET", "/k%d" % i, host="web.local")
            r = c.read_response()
            assert r.status == 200, r.summary()
            seq.append(r.header("X-Backend"))
    cnt = _names(seq)
    assert cnt == {"A": 30, "B": 30, "C": 30}, "equal weights over 90 requests: %s" % dict(cnt)


def test_weight_zero_gets_nothing(env):
    a = env.backend(name="A")
    b = env.backend(name="B")
    fg = env.farmgated(one_farm_config([server(a.port, weight=0), server(b.port)]))
    for i in range(20):
        r = http_request(fg.port, "GET", "/", host="web.local")
        assert r.status == 200 and r.header("X-Backend") == "B", "weight 0 server got traffic: %s" % r.summary()
    assert a.count == 0


def test_least_requests_avoids_busy_server(env):
    slow = env.backend(Reply(200, b"slow", headers=[("X-Backend", "SLOW")], delay=2.0), name="SLOW")
    fast = env.backend(name="FAST")
    fg = env.farmgated(one_farm_config([slow.port, fast.port], loadBalancing={"algorithm": "LeastRequests"}))
    results = []
    lock = threading.Lock()

    def one(i):
        try:
            r = http_request(fg.port, "GET", "/lr%d" % i, host="web.local", timeout=20)
            with lock:
                results.append(r.header("X-Backend") if r.status == 200 else "status %d" % r.status)
        except Exception as e:  # noqa: reported below
            with lock:
                results.append("error %r" % e)

    threads = []
    for i in range(12):
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.1)
    for t in threads:
        t.join(30)
    c = _names(results)
    assert len(results) == 12 and c["SLOW"] + c["FAST"] == 12, "some requests failed: %s" % results
    assert c["SLOW"] <= 2, \
        "LeastRequests must send new requests to the idle server while the slow one is busy: %s" % dict(c)


def test_request_hash_remote_addr(env):
    bes = [env.backend(name=n) for n in ("A", "B")]
    fg = env.farmgated(one_farm_config([b.port for b in bes],
                                       loadBalancing={"algorithm": "RequestHash", "hashServerVariable": "REMOTE_ADDR"}))
    mapping = {}
    for ip_last in range(2, 18):
        ip = "127.0.0.%d" % ip_last
        got = set()
        for i in range(3):
            r = http_request(fg.port, "GET", "/h%d" % i, host="web.local", source=ip)
            assert r.status == 200, r.summary()
            got.add(r.header("X-Backend"))
        assert len(got) == 1, "client %s was spread over %s; RequestHash(REMOTE_ADDR) must pin it" % (ip, got)
        mapping[ip] = got.pop()
    assert len(set(mapping.values())) == 2, "16 client addresses all hashed to one server: %s" % mapping


def test_request_hash_query_string(env):
    bes = [env.backend(name=n) for n in ("A", "B")]
    fg = env.farmgated(one_farm_config([b.port for b in bes],
                                       loadBalancing={"algorithm": "RequestHash", "queryStringNames": ["user"]}))
    mapping = {}
    for u in range(16):
        got = set()
        for i, path in enumerate(("/a", "/b/c", "/d")):
            r = http_request(fg.port, "GET", "%s?x=%d&user=u%d&y=%d" % (path, i, u, i * 7), host="web.local")
            assert r.status == 200, r.summary()
            got.add(r.header("X-Backend"))
        assert len(got) == 1, "user u%d was spread over %s; hashing on ?user= must pin it" % (u, got)
        mapping[u] = got.pop()
    assert len(set(mapping.values())) == 2, "16 users all hashed to one server: %s" % mapping
