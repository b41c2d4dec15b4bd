"""The management plane (issue 6, docs/management.md): farmgate-mgmt's REST API against a
real farmgated on the same configuration file, atomic persistence (a full and a read-only
file system), and the security list of issue 6 (401 for every route however it is spelt,
CSRF / Origin / Sec-Fetch-Site, GET never changes state, cookie flags, session rotation,
logout and password change, login throttling, security headers on every answer, nothing
taken from client headers, not reachable through a data-plane listener, file modes, no
default password) and the audit log; tokens over the API (listing, certificates with their
thumbprints, key generation, CSR, certificate import and its use by a farm, PIN entry),
GET /logs (and no PIN anywhere), keep-alive, the per-address connection limit and stalled
request heads.

Not covered here: POST /tokens/{t}/pfx, GET /config/previous, a management certificate from a
token.

farmgate-mgmt is started beside the build's farmgated (tests/integration/mgmt_client.py);
scrypt makes every setup / login / password check cost ~0.1 s, so the tests log in once and
keep the session.
"""

import base64
import http.client
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import threading
import time

import harness
from harness import (Farmgated, Reply, arr_lb_rule, build_request, farm, free_port, http_request,
                     make_config, one_farm_config, parse_responses, raw_request, rule, server,
                     wait_for)
from mgmt_client import PASSWORD, Mgmt, helper_runs, mgmt_bin, start_stack, system_helper
from pki import OPENSSL, SOFTHSM, Pki, SoftToken, TlsNginx, run, sha1_hex, sha256_hex

HOST = "web.local"
API = "/api/v1"
SECRET = "pfx-Secret-0xC0FFEE"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def sname(port):
    return "127.0.0.1:%d" % port


def dp_get(fg, path="/", host=HOST, timeout=10):
    """One request through the data plane."""
    return http_request(fg.port, "GET", path, host=host, timeout=timeout)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def expect(r, status, what):
    assert r.status == status, "%s: expected %d, got %s" % (what, status, r.summary(600))
    return r


def ok(r, what):
    return expect(r, 200, what)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(directory):
    """Temporary files a save left behind."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def farm_names(fg):
    return [f["name"] for f in fg.status()]


def stack(env, farms_cfg=None, nservers=2, health=False, **kw):
    """Backends A (and B), farmgated with farm "web" (rule for web.local) and
    farmgate-mgmt; the administrator's password set. Returns (fg, m, admin, backends)."""
    bes = [env.backend(name=n) for n in "AB"[:nservers]]
    fkw = {}
    if health:
        fkw["healthCheck"] = {"url": "http://%s/health" % HOST, "interval": "00:01:00",
                              "timeout": "00:00:02"}
    cfg = farms_cfg(bes) if farms_cfg else one_farm_config([b.port for b in bes], host=HOST, **fkw)
    fg, m = start_stack(env, cfg, **kw)
    admin = m.setup()
    return fg, m, admin, bes


def assert_no_data(r, what):
    """A refused answer carries nothing but an error."""
    for marker in (b'"farms"', b"webFarms", b'"entries"', b'"version"', b"farmgate_server_",
                   b'"servers"', b"listeners", b"csrfToken"):
        assert marker not in r.body, "%s leaked data (%s): %s" % (what, marker, r.summary(400))


SEC_HEADERS_CHECKED = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
                       "Strict-Transport-Security")


def assert_security_headers(r, what):
    csp = r.header("Content-Security-Policy")
    assert csp, "%s: no Content-Security-Policy: %s" % (what, r.summary(800))
    low = csp.lower()
    assert "'unsafe-inline'" not in low and "'unsafe-eval'" not in low, "%s: CSP %r" % (what, csp)
    assert re.search(r"frame-ancestors\s+'none'", low), "%s: CSP without frame-ancestors 'none': %r" % (what, csp)
    m = re.search(r"script-src([^;]*)", low) or re.search(r"default-src([^;]*)", low)
    assert m and m.group(1).split() == ["'self'"], "%s: scripts must come from 'self' only: %r" % (what, csp)
    assert (r.header("X-Content-Type-Options") or "").lower() == "nosniff", "%s: %s" % (what, r.summary(800))
    assert (r.header("Referrer-Policy") or "").lower() == "no-referrer", "%s: %s" % (what, r.summary(800))
    hsts = r.header("Strict-Transport-Security") or ""
    mm = re.search(r"max-age=(\d+)", hsts)
    assert mm and int(mm.group(1)) >= 86400 * 180, "%s: HSTS %r" % (what, hsts)


def first_throttle(attempt, n=3):
    """Calls attempt() (one wrong password, returns the answer) until it answers 429;
    returns the statuses seen. The daemon counts in whole seconds, so right after the
    fifth failure the 1 s window may already be over: the sixth failure then opens a 2 s
    one, and the next attempt must be throttled."""
    seen = []
    for _ in range(n):
        r = attempt()
        seen.append(r.status)
        if r.status == 429:
            return seen, r
    return seen, None


def lengthen_throttle(attempt, timeout=5.0):
    """Waits for the current window to end with wrong attempts (429s do not count), the
    first one let through failing again: the next window is >= 2 s."""
    def through():
        r = attempt()
        assert r.status in (401, 429), r.summary()
        if r.status == 401:
            return True
        time.sleep(0.15)
        return False
    wait_for(through, timeout=timeout, interval=0, msg="the throttling window to end")


# --------------------------------------------------------------------------
# 1. the API, route by route
# --------------------------------------------------------------------------

def test_first_start_setup_code_and_no_default_password(env):
    """First start: data directory 0700, key and setup code 0600, the code on the console;
    no password works before setup (admin, password, empty, Basic on /metrics); setup with
    a wrong code is 403, a short password 400; the right code sets the password (scrypt,
    0600, the code file removed), logs in, and a second setup is refused."""
    a = env.backend(name="A")
    fg, m = start_stack(env, one_farm_config([a.port], host=HOST))
    d = m.data_dir
    assert mode_of(d) == 0o700, "data directory mode %o" % mode_of(d)
    for n in ("setup-code", "mgmt-key.pem"):
        assert mode_of(os.path.join(d, n)) == 0o600, "%s mode %o" % (n, mode_of(os.path.join(d, n)))
    assert not mode_of(m.cert_path) & 0o022, "certificate writable by others: %o" % mode_of(m.cert_path)
    code = m.setup_code
    assert code and re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}", code), code
    assert code in m.log_text(), "the setup code must be printed on the console:\n" + m.log_text()
    # the certificate: self-signed P-256 with 127.0.0.1 in its SAN (the client verified it)
    p = subprocess.run(["openssl", "x509", "-in", m.cert_path, "-noout", "-text"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and "prime256v1" in p.stdout and "IP Address:127.0.0.1" in p.stdout, p.stdout

    anon = m.client()
    st = ok(anon.get(API + "/auth/state"), "auth state").json()
    assert st["passwordSet"] is False and st["loggedIn"] is False, st

    r = expect(anon.setup("0000-0000-0000"), 403, "setup with a wrong code")
    assert not r.header_all("Set-Cookie"), r.summary()
    r = expect(anon.setup(code.replace("-", "")), 403, "setup with the code in another spelling")
    r = expect(anon.setup(code, "short"), 400, "setup with a 5-character password")
    assert not r.header_all("Set-Cookie"), r.summary()
    r = expect(anon.setup(code, "123456789"), 400, "setup with a 9-character password")
    for pw in ("admin", "password", ""):
        r = expect(anon.login(pw), 401, "login with %r before any password is set" % pw)
        assert not r.header_all("Set-Cookie"), r.summary()
    r = expect(anon.get("/metrics", headers=[("Authorization", anon.basic("admin"))]), 401,
               "/metrics with admin:admin before setup")
    assert_no_data(r, "/metrics before setup")
    expect(anon.get(API + "/status"), 401, "status before setup")
    st = ok(anon.get(API + "/auth/state"), "auth state").json()
    assert st["passwordSet"] is False, "a refused setup must not set a password: %s" % st

    admin = m.client()
    r = ok(admin.setup(code), "setup with the right code")
    assert re.fullmatch(r"[0-9a-f]{32}", admin.csrf or ""), r.summary()
    assert admin.sid, "setup must log in: " + r.summary()
    ok(admin.get(API + "/status"), "status after setup")
    st = ok(admin.get(API + "/auth/state"), "auth state").json()
    assert st["passwordSet"] is True and st["loggedIn"] is True and st.get("csrfToken") == admin.csrf, st
    assert not os.path.exists(os.path.join(d, "setup-code")), "the setup code must be gone after setup"
    pwf = os.path.join(d, "password")
    assert mode_of(pwf) == 0o600, "password file mode %o" % mode_of(pwf)
    text = read_bytes(pwf).decode()
    assert text.startswith("scrypt$") and PASSWORD not in text, text

    for body in ({"setupCode": code, "password": "an attacker's password"},
                 {"setupCode": "0000-0000-0000", "password": "an attacker's password"}):
        r = m.client().post(API + "/auth/setup", body)
        assert r.status in (400, 403), "a second setup must be refused: " + r.summary()
        assert not r.header_all("Set-Cookie"), r.summary()
    expect(m.client().login("an attacker's password"), 401, "login with the refused second password")
    ok(m.client().login(PASSWORD), "login with the password set at setup")
    # the password survives a restart; no new setup code appears
    m.stop()
    m2 = Mgmt(env, fg, data_dir=d, name="mgmt-again").start()
    assert m2.setup_code is None and not os.path.exists(os.path.join(d, "setup-code"))
    ok(m2.login(PASSWORD).get(API + "/status"), "status after a restart")


def test_setup_happens_once_even_when_concurrent(env):
    """Two setups racing with the right code (a double click, or someone else who saw the
    console): exactly one sets the password, and it is the one that works."""
    a = env.backend(name="A")
    fg, m = start_stack(env, one_farm_config([a.port], host=HOST))
    pws = ["first racing passphrase", "second racing passphrase"]
    clients = [m.client(), m.client()]
    res = {}
    go = threading.Barrier(2)

    def run(i):
        go.wait()
        res[i] = clients[i].setup(m.setup_code, pws[i])
    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    codes = [res[i].status for i in range(2)]
    won = [i for i in range(2) if codes[i] == 200]
    assert len(won) == 1, (
        "two concurrent setups with the right code were both answered %s: both callers got a "
        "session and believe their password is set, but only one is stored" % codes)
    assert codes[1 - won[0]] in (400, 403), codes
    ok(m.client().login(pws[won[0]]), "the winner's password")
    expect(m.client().login(pws[1 - won[0]]), 401, "the loser's password")


def test_runtime_routes_status_states_verify_reset_system(env):
    """GET /status mirrors the control socket; POST .../servers/{s}/state is what
    farmgatectl shows and the data plane obeys; farm Offline answers 503 through the data
    plane, Online 200; verify probes every server now; reset zeroes the counters; errors are
    400 / 404; GET /system gives the version."""
    fg, m, admin, (a, b) = stack(env, health=True)
    st = ok(admin.get(API + "/status"), "status").json()
    assert [f["name"] for f in st["farms"]] == ["web"], st
    assert {s["server"] for s in st["farms"][0]["servers"]} == {sname(a.port), sname(b.port)}, st

    r = ok(admin.post(API + "/farms/web/servers/%s/state" % sname(a.port),
                      {"state": "DisallowNewConnections"}), "drain A")
    assert "DisallowNewConnections" in r.text, r.summary()
    assert fg.server_status("web", a.port)["state"] == "DisallowNewConnections"
    p = fg.ctl("status", "web", "--json")
    assert p.returncode == 0, p.output
    ctl = {s["server"]: s["state"] for f in json.loads(p.stdout)["farms"] for s in f["servers"]}
    assert ctl[sname(a.port)] == "DisallowNewConnections" and ctl[sname(b.port)] == "Available", ctl
    got = {dp_get(fg, "/d%d" % i).header("X-Backend") for i in range(6)}
    assert got == {"B"}, "a drained server got new requests: %s" % got
    # the server named with an encoded colon; the four states
    for state in ("UnavailableGracefully", "UnavailableImmediately", "Available"):
        ok(admin.post(API + "/farms/web/servers/127.0.0.1%%3A%d/state" % a.port, {"state": state}),
           "A -> " + state)
        assert fg.server_status("web", a.port)["state"] == state
    got = {dp_get(fg, "/e%d" % i).header("X-Backend") for i in range(6)}
    assert got == {"A", "B"}, got

    expect(admin.post(API + "/farms/web/servers/%s/state" % sname(a.port), {"state": "Sleeping"}),
           400, "an unknown state")
    expect(admin.post(API + "/farms/web/servers/%s/state" % sname(a.port), {}), 400, "no state")
    expect(admin.post(API + "/farms/web/servers/%s/state" % sname(a.port), "not json"), 400, "not JSON")
    expect(admin.post(API + "/farms/web/servers/127.0.0.1:1/state", {"state": "Available"}), 404,
           "an unknown server")
    expect(admin.post(API + "/farms/nope/servers/%s/state" % sname(a.port), {"state": "Available"}),
           404, "an unknown farm")
    expect(admin.post(API + "/farms/web/servers/%s/health" % sname(a.port), {"state": "Available"}),
           404, "an unknown server route")
    assert fg.server_status("web", a.port)["state"] == "Available"

    ok(admin.post(API + "/farms/web/state", {"state": "Offline"}), "farm offline")
    assert fg.farm_status("web")["state"] == "Offline"
    expect(dp_get(fg, "/off"), 503, "an offline farm through the data plane")
    expect(admin.post(API + "/farms/web/state", {"state": "Sideways"}), 400, "an unknown farm state")
    expect(admin.post(API + "/farms/nope/state", {"state": "Online"}), 404, "state of an unknown farm")
    ok(admin.post(API + "/farms/web/state", {"state": "Online"}), "farm online")
    ok(dp_get(fg, "/on"), "an online farm through the data plane")

    a.clear()
    b.clear()
    r = ok(admin.post(API + "/farms/web/verify"), "verify").json()
    res = {x["server"]: x for x in r["results"]}
    assert set(res) == {sname(a.port), sname(b.port)}, r
    assert all(x["result"] == "Success" and x["status"] == 200 for x in res.values()), r
    assert a.requests_to("/health") and b.requests_to("/health"), "verify must probe every server now"
    expect(admin.post(API + "/farms/nope/verify"), 404, "verify of an unknown farm")

    for i in range(4):
        ok(dp_get(fg, "/c%d" % i), "traffic")
    wait_for(lambda: fg.farm_status("web")["counters"]["totalRequests"] >= 4, msg="counters")
    r = ok(admin.post(API + "/farms/web/reset"), "reset").json()
    assert r["farm"]["counters"]["totalRequests"] == 0, r
    f = fg.farm_status("web")
    assert f["counters"]["totalRequests"] == 0, f
    assert all(s["counters"]["totalRequests"] == 0 for s in f["servers"]), f
    expect(admin.post(API + "/farms/nope/reset"), 404, "reset of an unknown farm")

    sysinfo = ok(admin.get(API + "/system"), "system").json()
    version = env.cli("-V").stdout.split()[1]
    assert sysinfo["version"] == version, (sysinfo, version)
    assert isinstance(sysinfo["uptimeS"], int) and 0 <= sysinfo["uptimeS"] < 600, sysinfo
    expect(admin.post(API + "/system"), 404, "POST /system")


def _with_secret(bes):
    """Farms "other" (index 0) and "web" (index 1, its protocol with a client
    certificate password); rules: web first, other second."""
    return make_config(
        farms=[farm("other", [server(bes[0].port)]),
               farm("web", [server(b.port) for b in bes], protocol={"clientCertPassword": SECRET})],
        rules=[arr_lb_rule("web", HOST), arr_lb_rule("other", "other.local")])


def test_config_reads_never_carry_secrets(env):
    """GET /config, /backup, /farms and /farms/{f} are the file minus clientCertPassword
    (never the secret's value), /backup as an attachment; /rules is the file's; unknown farm
    404; an edit of another farm keeps the secret in the file."""
    fg, m, admin, (a, b) = stack(env, farms_cfg=_with_secret)
    disk = json.loads(read_bytes(fg.config_path))
    assert disk["webFarms"][1]["protocol"]["clientCertPassword"] == SECRET
    want = json.loads(json.dumps(disk))
    del want["webFarms"][1]["protocol"]["clientCertPassword"]

    for path in ("/config", "/backup", "/farms", "/farms/web", "/farms/WEB"):
        r = ok(admin.get(API + path), "GET " + path)
        assert SECRET.encode() not in r.body and b"clientCertPassword" not in r.body, \
            "GET %s carries the secret: %s" % (path, r.text)
        assert "no-store" in (r.header("Cache-Control") or ""), r.summary()
    assert ok(admin.get(API + "/config"), "config").json() == want
    r = ok(admin.get(API + "/backup"), "backup")
    assert r.json() == want
    assert re.match(r"attachment\b", r.header("Content-Disposition") or ""), r.summary()
    assert ok(admin.get(API + "/farms"), "farms").json() == want["webFarms"]
    assert ok(admin.get(API + "/farms/web"), "farm web").json() == want["webFarms"][1]
    assert ok(admin.get(API + "/rules"), "rules").json() == disk["rules"]
    expect(admin.get(API + "/farms/nope"), 404, "an unknown farm")
    expect(admin.get(API + "/farms/"), 404, "an empty farm name")

    other = dict(disk["webFarms"][0], servers=[server(a.port, weight=5)])
    ok(admin.put(API + "/farms/other", other), "edit farm other")
    assert fg.server_status("other", a.port)["weight"] == 5
    disk2 = json.loads(read_bytes(fg.config_path))
    assert disk2["webFarms"][1]["protocol"].get("clientCertPassword") == SECRET, \
        "an edit of farm other dropped web's secret from the file: %s" % disk2["webFarms"][1]


def _two_farms(bes):
    a, b = bes
    return make_config(
        farms=[farm("web", [server(a.port), server(b.port)]), farm("other", [server(a.port)])],
        rules=[arr_lb_rule("web", HOST), arr_lb_rule("other", "other.local")])


def test_farm_edits_validation_paths_and_file_untouched(env):
    """PUT /farms/{f} with a bad weight is 400 naming $.webFarms[i].servers[j].weight, the
    file byte-identical and farmgated serving; other malformed bodies 400; renames onto
    another farm 409; POST /farms adds a farm (live); DELETE of a farm a rule uses is 400
    naming $.rules[k].action.url; DELETE of an unused farm removes it."""
    fg, m, admin, (a, b) = stack(env, farms_cfg=_two_farms)
    before = read_bytes(fg.config_path)
    cdir = os.path.dirname(fg.config_path)

    def unchanged(what):
        assert read_bytes(fg.config_path) == before, "%s changed the file" % what
        assert not leftovers(cdir), "%s left %s" % (what, leftovers(cdir))
        fg.assert_alive()
        ok(dp_get(fg, "/still"), "the data plane after " + what)

    for i, bad in enumerate((100001, -1, "heavy", 1.5)):
        r = expect(admin.put(API + "/farms/other", farm("other", [server(a.port), server(b.port, weight=bad)])),
                   400, "weight %r" % (bad,))
        assert r.json().get("path") == "$.webFarms[1].servers[1].weight", r.text
        unchanged("a bad weight")
    r = expect(admin.put(API + "/farms/web", farm("web", [server(a.port), server(70000)])), 400, "port 70000")
    assert r.json().get("path") == "$.webFarms[0].servers[1].httpPort", r.text
    for body, what in (("{not json", "a body that is not JSON"), ([1, 2], "an array"),
                       ({"servers": []}, "a farm without a name"), ({"name": 7}, "a numeric name")):
        expect(admin.put(API + "/farms/web", body), 400, what)
    unchanged("malformed bodies")
    expect(admin.put(API + "/farms/web", farm("other", [server(a.port)])), 409, "renaming web onto other")
    expect(admin.post(API + "/farms", farm("WEB", [server(a.port)])), 409, "adding a second web")
    expect(admin.post(API + "/farms/web", farm("x", [server(a.port)])), 405, "POST /farms/web")
    unchanged("conflicts")

    c = env.backend(name="C")
    ok(admin.post(API + "/farms", farm("added", [server(c.port)])), "POST /farms")
    assert farm_names(fg) == ["web", "other", "added"], farm_names(fg)
    assert ok(admin.get(API + "/farms/added"), "GET added").json() == farm("added", [server(c.port)])

    before = read_bytes(fg.config_path)
    r = expect(admin.delete(API + "/farms/other"), 400, "deleting a farm rule 1 uses")
    assert r.json().get("path") == "$.rules[1].action.url", r.text
    unchanged("a refused delete")
    expect(admin.delete(API + "/farms/nope"), 404, "deleting an unknown farm")
    expect(admin.delete(API + "/farms"), 405, "DELETE /farms")
    ok(admin.delete(API + "/farms/added"), "deleting an unused farm")
    assert farm_names(fg) == ["web", "other"], farm_names(fg)
    expect(admin.get(API + "/farms/added"), 404, "a deleted farm")
    assert [f["name"] for f in json.loads(read_bytes(fg.config_path))["webFarms"]] == ["web", "other"]


def test_farm_change_applies_live_without_dropping_in_flight(env):
    """A valid PUT /farms/web adding server B applies at once (B gets traffic, same
    farmgated process) while a slow request on A started before it completes intact."""
    a = env.backend(name="A")
    a.route("/slow", Reply(200, b"slow-done", headers=[("X-Backend", "A")], delay=2.0 * env.slow))
    fg, m = start_stack(env, one_farm_config([a.port], host=HOST))
    admin = m.setup()
    pid = fg.pid
    out = {}

    def slow():
        try:
            out["r"] = dp_get(fg, "/slow", timeout=20)
        except BaseException as e:  # noqa: reported below
            out["e"] = e
    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: a.requests_to("/slow"), msg="the slow request to reach A")
    b = env.backend(name="B")
    t0 = time.monotonic()
    ok(admin.put(API + "/farms/web", farm("web", [server(a.port), server(b.port)])), "adding B")
    took = time.monotonic() - t0
    assert took < 1.5 * env.slow, "the change waited %.1fs (for the in-flight request?)" % took
    assert t.is_alive(), "the slow request ended before the change was applied"
    got = [dp_get(fg, "/n%d" % i).header("X-Backend") for i in range(8)]
    assert "B" in got, "the new server got no traffic after the change: %s" % got
    t.join(20)
    assert "e" not in out, "the in-flight request failed: %r" % out.get("e")
    r = out["r"]
    assert r.status == 200 and r.body == b"slow-done", r.summary()
    assert fg.pid == pid and fg.alive()


def test_rules_get_put_and_tester(env):
    """GET /rules is the file's; PUT /rules applies (a new Host routes); POST /rules/test
    names the rule and farm (and NoRoute); bad bodies 400; a rule naming an unknown farm is
    400 naming $.rules[i].action.url with the file unchanged."""
    fg, m, admin, (a, b) = stack(env)
    rules = ok(admin.get(API + "/rules"), "GET rules").json()
    assert rules == json.loads(read_bytes(fg.config_path))["rules"], rules
    expect(dp_get(fg, "/x", host="new.local"), 404, "new.local before the change")
    new = [rule("to-web-new", "*", {"type": "Rewrite", "url": "http://web/{R:0}"},
                conditions=[{"input": "{HTTP_HOST}", "pattern": "new.local"}],
                patternSyntax="Wildcard", stopProcessing=True)] + rules
    ok(admin.put(API + "/rules", new), "PUT rules")
    assert ok(admin.get(API + "/rules"), "GET rules").json() == new
    ok(dp_get(fg, "/x", host="new.local"), "new.local after the change")

    t = ok(admin.post(API + "/rules/test", {"url": "/a/b?c=1", "host": "new.local"}), "rule test").json()
    assert t["outcome"] == "Farm" and t["rule"] == "to-web-new" and t["farm"] == "web", t
    t = ok(admin.post(API + "/rules/test", {"url": "/a", "host": HOST}), "rule test").json()
    assert t["rule"] == "ARR_web_loadbalance" and t["farm"] == "web", t
    t = ok(admin.post(API + "/rules/test", {"url": "/a", "host": "nomatch.example"}), "rule test").json()
    assert t["outcome"] == "NoRoute" and t["farm"] is None and t["rule"] is None, t
    for body in ({"host": HOST}, {"url": "/a"}, {"url": "a", "host": HOST}, "nope"):
        expect(admin.post(API + "/rules/test", body), 400, "rule test with %r" % (body,))

    before = read_bytes(fg.config_path)
    for body in ({"rules": []}, "[", 5):
        expect(admin.put(API + "/rules", body), 400, "PUT rules with %r" % (body,))
    bad = new + [rule("to-ghost", "^(.*)$", {"type": "Rewrite", "url": "http://ghost/{R:1}"})]
    r = expect(admin.put(API + "/rules", bad), 400, "a rule naming an unknown farm")
    assert r.json().get("path") == "$.rules[%d].action.url" % (len(bad) - 1), r.text
    assert read_bytes(fg.config_path) == before
    ok(dp_get(fg, "/x", host="new.local"), "new.local after refused changes")


def test_whole_config_put_backup_and_restore(env):
    """PUT /config replaces the file (applied live) and validates first (400 naming the
    path, file unchanged); GET /backup then POST /restore puts the exported configuration
    back."""
    fg, m, admin, (a, b) = stack(env)
    backup = ok(admin.get(API + "/backup"), "backup").body
    conf = json.loads(backup)
    conf["webFarms"].append(farm("second", [server(b.port)]))
    conf["rules"].insert(0, arr_lb_rule("second", "second.local"))
    ok(admin.put(API + "/config", conf), "PUT config")
    assert farm_names(fg) == ["web", "second"]
    assert ok(dp_get(fg, "/s", host="second.local"), "second.local").header("X-Backend") == "B"

    before = read_bytes(fg.config_path)
    bad = json.loads(json.dumps(conf))
    bad["webFarms"][1]["servers"][0]["httpPort"] = 0
    r = expect(admin.put(API + "/config", bad), 400, "a bad port")
    assert r.json().get("path") == "$.webFarms[1].servers[0].httpPort", r.text
    expect(admin.put(API + "/config", "{"), 400, "PUT config that is not JSON")
    expect(admin.put(API + "/config"), 400, "PUT config without a body")
    expect(admin.post(API + "/restore", "{"), 400, "restore of something that is not JSON")
    assert read_bytes(fg.config_path) == before
    expect(admin.post(API + "/config", conf), 405, "POST /config")

    ok(admin.post(API + "/restore", backup.decode()), "restore the backup")
    assert farm_names(fg) == ["web"]
    expect(dp_get(fg, "/s", host="second.local"), 404, "second.local after the restore")
    assert ok(admin.get(API + "/config"), "config").json() == json.loads(backup)


def _occupied_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def test_change_refused_by_farmgated_is_409_and_rolled_back(env):
    """A configuration the loader accepts but farmgated cannot apply (a new listener on a
    port another process holds) is 409 with farmgated's error, the file put back
    byte-identical, farmgated still running the old configuration; once the port is free
    the same change applies."""
    fg, m, admin, (a, b) = stack(env)
    sock, port = _occupied_port()
    try:
        before = read_bytes(fg.config_path)
        conf = json.loads(before)
        conf["listeners"].append({"address": "127.0.0.1", "port": port})
        conf["webFarms"].append(farm("extra", [server(b.port)]))
        r = expect(admin.put(API + "/config", conf), 409, "a listener on a port in use")
        assert str(port) in r.json()["error"], r.text
        assert read_bytes(fg.config_path) == before, "the refused configuration stayed on disk"
        assert not leftovers(os.path.dirname(fg.config_path))
        fg.assert_alive()
        assert farm_names(fg) == ["web"], "farmgated runs the refused configuration: %s" % farm_names(fg)
        ok(dp_get(fg, "/after"), "the data plane after a refused change")
        ok(admin.get(API + "/status"), "status after a refused change")
    finally:
        sock.close()
    ok(admin.put(API + "/config", conf), "the same change with the port free")
    assert farm_names(fg) == ["web", "extra"]
    ok(http_request(port, "GET", "/p", host=HOST), "the new listener")


def test_refused_change_keeps_the_previous_generation(env):
    """A change farmgated refuses leaves no trace: the previous generation (<file>.prev)
    is still the one before the last applied change, so POST /config/restore goes back
    to it."""
    fg, m, admin, (a, b) = stack(env)
    gen_a = read_bytes(fg.config_path)
    prev = fg.config_path + ".prev"
    ok(admin.post(API + "/farms", farm("two", [server(b.port)])), "add farm two")
    gen_b = read_bytes(fg.config_path)
    assert read_bytes(prev) == gen_a
    sock, port = _occupied_port()
    try:
        conf = json.loads(gen_b)
        conf["listeners"].append({"address": "127.0.0.1", "port": port})
        expect(admin.put(API + "/config", conf), 409, "a listener on a port in use")
    finally:
        sock.close()
    assert read_bytes(fg.config_path) == gen_b
    assert read_bytes(prev) == gen_a, (
        "after a refused change <file>.prev holds %s generation instead of the one before the "
        "last applied change" % ("the current" if read_bytes(prev) == gen_b else "another"))
    ok(admin.post(API + "/config/restore"), "restore the previous generation")
    assert farm_names(fg) == ["web"], farm_names(fg)


def test_config_restore_previous_generation(env):
    """POST /config/restore without a previous generation is 404; after a change it puts
    <file>.prev back byte-identical and applies it (the undone change becomes .prev)."""
    fg, m, admin, (a, b) = stack(env)
    prev = fg.config_path + ".prev"
    expect(admin.post(API + "/config/restore"), 404, "restore with no previous generation")
    gen_a = read_bytes(fg.config_path)
    ok(admin.put(API + "/farms/web", farm("web", [server(a.port, weight=7), server(b.port)])), "weight 7")
    gen_b = read_bytes(fg.config_path)
    assert fg.server_status("web", a.port)["weight"] == 7
    assert read_bytes(prev) == gen_a, "the previous generation must be the file before the change"
    assert mode_of(fg.config_path) == mode_of(prev)
    expect(admin.get(API + "/config/restore"), 405, "GET /config/restore")
    assert read_bytes(fg.config_path) == gen_b
    ok(admin.post(API + "/config/restore"), "restore")
    assert read_bytes(fg.config_path) == gen_a, "the restored file is not the previous generation"
    assert fg.server_status("web", a.port)["weight"] == 100, "the restore was not applied"
    assert read_bytes(prev) == gen_b
    ok(admin.post(API + "/config/restore"), "restore again (redo)")
    assert read_bytes(fg.config_path) == gen_b
    assert fg.server_status("web", a.port)["weight"] == 7
    details = [e[3] for e in m.audit_entries() if e[2] == "config"]
    assert sum("previous" in d for d in details) == 2, details


PROM_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
PROM_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value}; fails on any line that is not the
    text format (# TYPE before a metric's first sample)."""
    types, out = {}, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            m = re.match(r"^# (TYPE|HELP) (\S+) ?(.*)$", line)
            assert m, "bad comment line %r" % line
            if m.group(1) == "TYPE":
                assert m.group(3) in ("counter", "gauge", "histogram", "summary", "untyped"), line
                types[m.group(2)] = m.group(3)
            continue
        m = PROM_SAMPLE.match(line)
        assert m, "not a Prometheus sample: %r" % line
        name, labels_s, value = m.groups()
        assert name in types, "%s has no # TYPE before its samples" % name
        labels = {}
        rest = labels_s or ""
        while rest:
            lm = PROM_LABEL.match(rest)
            assert lm, "bad labels in %r" % line
            labels[lm.group(1)] = lm.group(2)
            rest = rest[lm.end():]
        out[(name, frozenset(labels.items()))] = float(value)
    return types, out


def test_metrics_prometheus_text_and_auth(env):
    """/metrics: 401 with WWW-Authenticate: Basic without credentials or with a wrong
    password; with Basic (the admin password) or a session: Prometheus text with farm and
    server labels, request counters that count, health and availability gauges."""
    fg, m, admin, (a, b) = stack(env)
    anon = m.client()
    r = expect(anon.get("/metrics"), 401, "/metrics without credentials")
    assert re.match(r"Basic\b", r.header("WWW-Authenticate") or "", re.I), r.summary()
    assert_no_data(r, "/metrics without credentials")
    r = expect(anon.get("/metrics", headers=[("Authorization", anon.basic("wrong password!"))]), 401,
               "/metrics with a wrong password")
    assert_no_data(r, "/metrics with a wrong password")
    for i in range(6):
        ok(dp_get(fg, "/m%d" % i), "traffic")
    ok(admin.post(API + "/farms/web/servers/%s/state" % sname(b.port), {"state": "DisallowNewConnections"}),
       "drain B")
    wait_for(lambda: fg.farm_status("web")["counters"]["totalRequests"] >= 6, msg="counters")

    r = ok(anon.get("/metrics", headers=[("Authorization", anon.basic(PASSWORD, user="prometheus"))]),
           "/metrics with Basic")
    assert r.header("Content-Type", "").startswith("text/plain"), r.summary()
    types, samples = parse_prometheus(r.text)
    assert types.get("farmgate_server_requests_total") == "counter", types

    def val(name, port):
        return samples[(name, frozenset({"farm": "web", "server": sname(port)}.items()))]
    assert val("farmgate_server_requests_total", a.port) + val("farmgate_server_requests_total", b.port) == 6, r.text
    assert val("farmgate_server_requests_total", a.port) >= 1
    assert val("farmgate_server_healthy", a.port) == 1
    assert val("farmgate_server_available", a.port) == 1 and val("farmgate_server_available", b.port) == 0, r.text
    assert all(dict(k[1]).keys() == {"farm", "server"} for k in samples), "labels other than farm/server"
    r2 = ok(admin.get("/metrics"), "/metrics with a session")
    assert parse_prometheus(r2.text)[1].keys() == samples.keys()
    expect(anon.post("/metrics", headers=[("Authorization", anon.basic(PASSWORD))]), 401,
           "POST /metrics with Basic")


# --------------------------------------------------------------------------
# 2. atomic persistence
# --------------------------------------------------------------------------

def _mount_tmpfs(env, size="256k"):
    mnt = env.mkdtemp("tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", mnt],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, "cannot mount a tmpfs (the test needs root): %s" % p.stderr

    def umount():
        subprocess.run(["mount", "-o", "remount,rw", mnt], capture_output=True, timeout=10)
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10)
    env.on_cleanup(umount)
    return mnt


def _fill(path, leave=0):
    """Fills the file system of path (a new file) and frees `leave` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    blk = b"x" * 4096
    try:
        while True:
            try:
                if os.write(fd, blk) < len(blk):
                    break
            except OSError as e:
                if e.errno == 28:
                    break
                raise
    finally:
        os.close(fd)
    if leave:
        os.truncate(path, max(0, os.path.getsize(path) - leave))


def test_atomic_persistence_full_and_read_only_disk(env):
    """The configuration lives on a small tmpfs. Full disk (room for the previous
    generation but not the new file; then no room at all) and a read-only remount: every
    change is an error, the file is byte-identical and loadable, no temporary file is left,
    farmgated keeps serving and reloads it. With room again the change is saved and applied,
    the old text kept as .prev."""
    mnt = _mount_tmpfs(env)
    a = env.backend(name="A")
    cfg = one_farm_config([a.port], host=HOST)
    cfg["management"] = {"address": "127.0.0.1", "port": free_port()}
    fg = Farmgated(env, cfg)
    fg.config_path = os.path.join(mnt, "farmgated.json")
    fg.start()
    m = Mgmt(env, fg).start()
    admin = m.setup()
    before = read_bytes(fg.config_path)
    filler = os.path.join(mnt, "filler")

    def intact(what):
        assert read_bytes(fg.config_path) == before, "%s: the file changed" % what
        assert not leftovers(mnt), "%s left %s" % (what, leftovers(mnt))
        p = env.cli("-t", "-c", fg.config_path)
        assert p.returncode == 0, "%s: the file does not load: %s" % (what, p.output)
        fg.assert_alive()
        assert fg.control({"op": "reload"}).get("ok") is True
        ok(dp_get(fg, "/x"), "the data plane after " + what)

    big = json.loads(before)
    big["webFarms"][0]["servers"][0]["weight"] = 3
    padded = json.dumps(big, indent=2) + " " * 48000  # JSON allows trailing white space
    _fill(filler, leave=8192)  # room for the previous generation, not for 48 KB
    r = admin.put(API + "/config", padded)
    assert r.status >= 500, "a save on a full disk must fail: " + r.summary()
    assert "space" in r.json()["error"].lower(), r.text
    intact("a full disk (new file)")
    assert fg.server_status("web", a.port)["weight"] == 100

    os.unlink(filler)
    _fill(filler)  # no room at all
    r = admin.put(API + "/farms/web", farm("web", [server(a.port, weight=4)]))
    assert r.status >= 500, "a save on a full disk must fail: " + r.summary()
    intact("a full disk (previous generation)")

    os.unlink(filler)
    p = subprocess.run(["mount", "-o", "remount,ro", mnt], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    r = admin.put(API + "/farms/web", farm("web", [server(a.port, weight=5)]))
    assert r.status >= 500, "a save on a read-only file system must fail: " + r.summary()
    assert read_bytes(fg.config_path) == before
    p = subprocess.run(["mount", "-o", "remount,rw", mnt], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    intact("a read-only file system")

    ok(admin.put(API + "/config", padded), "the same change with room")
    assert read_bytes(fg.config_path) == padded.encode()
    assert read_bytes(fg.config_path + ".prev") == before
    assert not leftovers(mnt), leftovers(mnt)
    assert fg.server_status("web", a.port)["weight"] == 3


def test_concurrent_edits_are_all_kept_and_never_torn(env):
    """Eight farms added at once by eight clients: every one is answered 200 and every one
    is in the file and running (no lost update); meanwhile a reader never sees a partial
    file."""
    fg, m, admin, (a, b) = stack(env)
    stop = threading.Event()
    torn = []
    reads = [0]

    def reader():
        while not stop.is_set():
            data = read_bytes(fg.config_path)
            try:
                json.loads(data)
            except ValueError:
                torn.append(data)
            reads[0] += 1
    rt = threading.Thread(target=reader)
    rt.start()
    results = {}

    def add(i):
        results[i] = admin.post(API + "/farms", farm("f%d" % i, [server(a.port)]))
    ts = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    finally:
        stop.set()
        rt.join(10)
    assert not torn, "a reader saw a partial file: %r" % torn[0][:200]
    assert reads[0] > 0
    bad = {i: r.summary() for i, r in results.items() if r.status != 200}
    assert len(results) == 8 and not bad, bad
    want = {"f%d" % i for i in range(8)}
    on_disk = {f["name"] for f in json.loads(read_bytes(fg.config_path))["webFarms"]}
    assert want <= on_disk, "edits lost on disk: %s (all answered 200)" % sorted(want - on_disk)
    running = set(farm_names(fg))
    assert want <= running, "edits lost in farmgated: %s" % sorted(want - running)


# --------------------------------------------------------------------------
# 3. security
# --------------------------------------------------------------------------

def _routes(port):
    s = sname(port)
    return [
        ("GET", "/api/v1/status", None), ("GET", "/api/v1/config", None),
        ("PUT", "/api/v1/config", {"listeners": []}), ("GET", "/api/v1/backup", None),
        ("POST", "/api/v1/restore", {"listeners": []}), ("POST", "/api/v1/config/restore", None),
        ("GET", "/api/v1/config/previous", None), ("GET", "/api/v1/farms", None),
        ("POST", "/api/v1/farms", farm("x", [])), ("GET", "/api/v1/farms/web", None),
        ("PUT", "/api/v1/farms/web", farm("web", [])), ("DELETE", "/api/v1/farms/web", None),
        ("POST", "/api/v1/farms/web/state", {"state": "Offline"}),
        ("POST", "/api/v1/farms/web/verify", None), ("POST", "/api/v1/farms/web/reset", None),
        ("POST", "/api/v1/farms/web/servers/%s/state" % s, {"state": "UnavailableImmediately"}),
        ("GET", "/api/v1/rules", None), ("PUT", "/api/v1/rules", []),
        ("POST", "/api/v1/rules/test", {"url": "/", "host": HOST}), ("GET", "/api/v1/audit", None),
        ("GET", "/api/v1/system", None), ("GET", "/metrics", None), ("HEAD", "/api/v1/status", None),
        ("POST", "/api/v1/system/reboot", {"password": PASSWORD}),
        ("POST", "/api/v1/system/factory-reset", {"password": PASSWORD, "confirm": "factory-reset"}),
        ("POST", "/api/v1/auth/logout", None), ("POST", "/api/v1/auth/password",
                                                {"current": PASSWORD, "password": "x" * 12}),
        ("GET", "/api/v1/tokens", None), ("GET", "/api/v1/logs", None),
        ("GET", "/api/v1/tokens/t/certificates", None),
        ("POST", "/api/v1/tokens/t/keys", {"type": "EC-P256", "label": "k"}),
        ("POST", "/api/v1/tokens/t/csr", {"keyLabel": "k", "subject": "/CN=k"}),
        ("POST", "/api/v1/tokens/t/certificates", {"pem": "x"}), ("POST", "/api/v1/tokens/t/pin", {"pin": "1234"}),
        ("OPTIONS", "/api/v1/status", None), ("TRACE", "/api/v1/status", None),
    ]


def _variants(rest):
    """Spellings of /api/v1/<rest> that a path-normalising proxy or server might
    route to it."""
    up = rest.upper()
    return [
        "/api/v1/x/..;/" + rest, "/api/v1/..;/v1/" + rest, "/api/v1/%2e%2e/v1/" + rest,
        "/api/v1/%2E%2E/v1/" + rest, "/api/v1/%252e%252e/v1/" + rest, "/api/%2e/v1/" + rest,
        "//api/v1/" + rest, "/api//v1/" + rest, "/api/v1//" + rest, "/./api/v1/" + rest,
        "/api/v1/./" + rest, "/api/v1/" + rest + "%00", "/api/v1/" + rest + "%2500",
        "/API/V1/" + up, "/Api/v1/" + rest, "/api/v1/" + rest + "/", "/api/v1/" + rest + ";",
        "/api/v1/" + rest + ";jsessionid=1", "/api/v1/" + rest + "%20", "/api/v1/" + rest + "\\",
        "/%61pi/v1/" + rest, "/api%2fv1%2f" + rest, "/index.html/../api/v1/" + rest,
        "/app.js/..%2fapi/v1/" + rest, "/api/v1/auth/../" + rest, "/api/v1/auth/state/../../" + rest,
        "/api/v1/auth/login/..;/..;/" + rest, "/api/v1/auth/state/%2e%2e/%2e%2e/" + rest,
        "/api/v1/auth/state%2f..%2f" + rest, "/favicon.svg/../api/v1/" + rest,
    ]


def test_every_route_unauthenticated_is_401(env):
    """Without a session every route (and every spelling of a few: ..;/, %2e%2e/, //, /./,
    double encoding, %00, upper case, trailing / ; %20, asset prefixes) is 401 with no data
    -- with or without CSRF headers, with forged cookies, with identity headers a proxy
    might set, with Basic credentials on the API. Nothing changed afterwards."""
    fg, m, admin, (a, b) = stack(env)
    ok(admin.get(API + "/status"), "status with the session")
    before = read_bytes(fg.config_path)
    anon = m.client()
    anon.csrf = admin.csrf  # even the right CSRF token is worth nothing without the cookie
    for method, path, body in _routes(a.port):
        r = anon.request(method, path, body)
        assert r.status == 401, "%s %s without a session: %s" % (method, path, r.summary())
        assert_no_data(r, "%s %s" % (method, path))
    for target in ("status", "config", "audit", "backup", "farms", "farms/web"):
        for p in _variants(target):
            r = anon.get(p)
            assert r.status == 401, "GET %s without a session: %s" % (p, r.summary())
            assert_no_data(r, "GET " + p)
    for p in _variants("farms/web/state") + _variants("farms/web/servers/%s/state" % sname(a.port)):
        r = anon.post(p, {"state": "Offline"})
        assert r.status == 401, "POST %s without a session: %s" % (p, r.summary())
    for p in ("/metrics/", "/METRICS", "//metrics", "/./metrics", "/api/v1/../../metrics", "/metrics%00",
              "/metrics;x"):
        r = anon.get(p)
        assert r.status == 401, "GET %s without credentials: %s" % (p, r.summary())
        assert_no_data(r, "GET " + p)
    r = anon.get("https://%s:%d/api/v1/status" % (m.host, m.port))
    assert r.status in (400, 401), "absolute-form target: " + r.summary()
    assert_no_data(r, "absolute-form target")

    sid = admin.sid
    forged = ["__Host-fgsid=" + "0" * 32, "__Host-fgsid=" + sid[:-1], "__Host-fgsid=" + sid + "0",
              "__Host-fgsid=" + sid.upper(), "fgsid=" + sid, "__host-fgsid=" + sid,
              "x__Host-fgsid=" + sid, "__Host-fgsid=" + admin.csrf]
    for c in forged:
        r = anon.get(API + "/status", cookie=c)
        assert r.status == 401, "a forged cookie %r was accepted: %s" % (c, r.summary())
    idhdrs = [("X-Forwarded-For", "127.0.0.1"), ("Forwarded", "for=127.0.0.1;proto=https"),
              ("X-Real-IP", "127.0.0.1"), ("X-Remote-User", "admin"), ("Remote-User", "admin"),
              ("X-Forwarded-User", "admin"), ("X-Authenticated-User", "admin"),
              ("Authorization", "Bearer " + sid), ("Authorization", anon.basic(PASSWORD)),
              ("X-CSRF-Token", admin.csrf), ("X-Session", sid)]
    for h in idhdrs:
        r = anon.get(API + "/status", headers=[h])
        assert r.status == 401, "%s: %s gave access: %s" % (h[0], h[1], r.summary())
        assert_no_data(r, "%s header" % h[0])
    r = anon.get(API + "/status", headers=idhdrs[:8])
    assert r.status == 401, r.summary()

    assert read_bytes(fg.config_path) == before, "an unauthenticated request changed the file"
    f = fg.farm_status("web")
    assert f["state"] == "Online" and all(s["state"] == "Available" for s in f["servers"]), f
    ok(admin.get(API + "/status"), "the session still works")


def test_csrf_origin_and_fetch_site_on_state_changes(env):
    """State changes with a session but no X-CSRF-Token, a wrong one or another session's,
    a foreign / http / null Origin, neither Origin nor Sec-Fetch-Site, or Sec-Fetch-Site
    cross-site / same-site are 403 and change nothing; the right token with our Origin, or
    with Sec-Fetch-Site: same-origin alone, is accepted. Login and setup refuse foreign
    origins too."""
    fg, m, admin, (a, b) = stack(env)
    other = m.login()
    ours = m.origin
    before = read_bytes(fg.config_path)
    changes = [
        ("POST", API + "/farms/web/state", {"state": "Offline"}),
        ("POST", API + "/farms/web/servers/%s/state" % sname(a.port), {"state": "UnavailableImmediately"}),
        ("POST", API + "/farms/web/reset", None),
        ("POST", API + "/farms", farm("evil", [server(a.port)])),
        ("PUT", API + "/farms/web", farm("web", [server(a.port)])),
        ("DELETE", API + "/farms/web", None),
        ("PUT", API + "/rules", []),
        ("PUT", API + "/config", json.loads(before)),
        ("POST", API + "/restore", json.loads(before)),
        ("POST", API + "/config/restore", None),
        ("POST", API + "/auth/password", {"current": PASSWORD, "password": "evil password 123"}),
        ("POST", API + "/auth/logout", None),
    ]
    bad = [
        ("no token", dict(csrf=False)),
        ("a wrong token", dict(csrf="0" * 32)),
        ("another session's token", dict(csrf=other.csrf)),
        ("the token in upper case", dict(csrf=admin.csrf.upper())),
        ("a truncated token", dict(csrf=admin.csrf[:31])),
        ("a foreign Origin", dict(origin="https://evil.example")),
        ("an http Origin", dict(origin=ours.replace("https:", "http:"))),
        ("Origin null", dict(origin="null")),
        ("an Origin with a suffix", dict(origin=ours + ".evil.example")),
        ("an Origin on another port", dict(origin="https://127.0.0.1:1")),
        ("neither Origin nor Sec-Fetch-Site", dict(origin=False)),
        ("Sec-Fetch-Site: cross-site", dict(headers=[("Sec-Fetch-Site", "cross-site")])),
        ("Sec-Fetch-Site: same-site", dict(headers=[("Sec-Fetch-Site", "same-site")])),
        ("Sec-Fetch-Site: cross-site without Origin",
         dict(origin=False, headers=[("Sec-Fetch-Site", "cross-site")])),
        ("Sec-Fetch-Site: none", dict(origin=False, headers=[("Sec-Fetch-Site", "none")])),
    ]
    for method, path, body in changes:
        for what, kw in bad:
            r = admin.request(method, path, body, **kw)
            assert r.status == 403, "%s %s with %s: %s" % (method, path, what, r.summary())
            assert not r.header_all("Set-Cookie"), r.summary()
    assert read_bytes(fg.config_path) == before, "a refused request changed the file"
    f = fg.farm_status("web")
    assert f["state"] == "Online" and all(s["state"] == "Available" for s in f["servers"]), f
    ok(admin.get(API + "/status"), "the session survived (logout was refused)")
    ok(m.login(PASSWORD).get(API + "/status"), "the password was not changed")

    ok(admin.post(API + "/farms/web/state", {"state": "Offline"}), "the right token and Origin")
    assert fg.farm_status("web")["state"] == "Offline"
    ok(admin.post(API + "/farms/web/state", {"state": "Online"}, origin=False,
                  headers=[("Sec-Fetch-Site", "same-origin")]), "the right token and Sec-Fetch-Site: same-origin")
    assert fg.farm_status("web")["state"] == "Online"

    for what, kw in (("a foreign Origin", dict(origin="https://evil.example")),
                     ("Sec-Fetch-Site: cross-site", dict(headers=[("Sec-Fetch-Site", "cross-site")])),
                     ("Sec-Fetch-Site: same-site", dict(headers=[("Sec-Fetch-Site", "same-site")]))):
        c = m.client()
        r = c.login(PASSWORD, **kw)
        assert r.status == 403, "login with %s: %s" % (what, r.summary())
        assert not c.sid, "login with %s set a cookie" % what
        r = c.post(API + "/auth/setup", {"setupCode": "0000-0000-0000", "password": "x" * 12}, **kw)
        assert r.status == 403, "setup with %s: %s" % (what, r.summary())


def test_get_never_changes_state(env):
    """GET and HEAD on every state-changing route are refused (405, or 404 where no GET
    route exists) and change nothing: server and farm states, counters, the session, the
    file."""
    fg, m, admin, (a, b) = stack(env)
    for i in range(3):
        ok(dp_get(fg, "/t%d" % i), "traffic")
    wait_for(lambda: fg.farm_status("web")["counters"]["totalRequests"] >= 3, msg="counters")
    before = read_bytes(fg.config_path)
    s = sname(a.port)
    must_405 = [API + "/farms/web/state", API + "/farms/web/verify", API + "/farms/web/reset",
                API + "/farms/web/servers/%s/state" % s, API + "/auth/logout", API + "/auth/password",
                API + "/auth/setup", API + "/auth/login", API + "/config/restore", API + "/restore",
                API + "/system/reboot", API + "/system/factory-reset"]
    for method in ("GET", "HEAD"):
        for path in must_405:
            for q in ("", "?state=Offline"):
                r = admin.request(method, path + q)
                assert r.status == 405, "%s %s: %s" % (method, path + q, r.summary())
        r = admin.request(method, API + "/rules/test?url=/&host=" + HOST)
        assert r.status in (404, 405), r.summary()
    f = fg.farm_status("web")
    assert f["state"] == "Online" and all(x["state"] == "Available" for x in f["servers"]), f
    assert f["counters"]["totalRequests"] >= 3, "a GET reset the counters: %s" % f["counters"]
    assert read_bytes(fg.config_path) == before
    ok(admin.get(API + "/status"), "the session after GET /auth/logout")


def _cookie_attrs(v):
    parts = [p.strip() for p in v.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, _, val = p.partition("=")
        attrs[k.lower()] = val
    return name, value, attrs


def test_session_cookie_flags_rotation_and_logout(env):
    """The session cookie: __Host-fgsid, 128 random bits, Secure, HttpOnly, SameSite=Strict,
    Path=/, no Domain; a new id at every login, the old one dead; distinct CSRF tokens;
    logout clears the cookie and kills the session (and is not replayable)."""
    fg, m, admin, (a, b) = stack(env)
    c = m.client()
    r = ok(c.login(PASSWORD), "login")
    cookies = r.header_all("Set-Cookie")
    assert len(cookies) == 1, r.summary()
    name, value, attrs = _cookie_attrs(cookies[0])
    assert name == "__Host-fgsid" and re.fullmatch(r"[0-9a-f]{32}", value), cookies
    assert "secure" in attrs and "httponly" in attrs, cookies
    assert attrs.get("samesite", "").lower() == "strict" and attrs.get("path") == "/", cookies
    assert "domain" not in attrs, cookies
    first_sid, first_csrf = c.sid, c.csrf
    ok(c.get(API + "/status"), "status with the first session")

    r = ok(c.login(PASSWORD), "login again with the first session's cookie")
    assert c.sid != first_sid and c.csrf != first_csrf, "the session was not rotated at login"
    expect(c.get(API + "/status", cookie="__Host-fgsid=" + first_sid), 401, "the pre-login session")
    ok(c.get(API + "/status"), "status with the rotated session")
    ids = {c.sid, first_sid, admin.sid}
    csrfs = {c.csrf, first_csrf, admin.csrf}
    for _ in range(3):
        x = m.login()
        ids.add(x.sid)
        csrfs.add(x.csrf)
    assert len(ids) == 6 and len(csrfs) == 6, "session ids / CSRF tokens repeat"

    sid = c.sid
    r = ok(c.post(API + "/auth/logout"), "logout")
    cleared = [v for v in r.header_all("Set-Cookie") if v.startswith("__Host-fgsid=")]
    assert cleared, "logout must clear the cookie: " + r.summary()
    n, v, at = _cookie_attrs(cleared[0])
    assert at.get("max-age") == "0" and "secure" in at and at.get("path") == "/", cleared
    expect(c.get(API + "/status", cookie="__Host-fgsid=" + sid), 401, "the logged-out session")
    st = ok(c.get(API + "/auth/state", cookie="__Host-fgsid=" + sid), "auth state").json()
    assert st["loggedIn"] is False and "csrfToken" not in st, st
    r = c.post(API + "/auth/logout", cookie="__Host-fgsid=" + sid)
    expect(r, 401, "logout replayed")
    ok(admin.get(API + "/status"), "another session survives someone's logout")


def test_password_change_drops_every_session(env):
    """POST /auth/password: a wrong current password or a short new one is 400 and keeps
    the sessions; a good change closes every session (old cookies 401), the old password
    stops working and the new one works."""
    fg, m, admin, (a, b) = stack(env)
    s2 = m.login()
    new = "a brand new passphrase"
    expect(admin.post(API + "/auth/password", {"current": "not it at all", "password": new}), 400,
           "a wrong current password")
    expect(admin.post(API + "/auth/password", {"current": PASSWORD, "password": "short"}), 400,
           "a short new password")
    expect(admin.post(API + "/auth/password", {"password": new}), 400, "no current password")
    ok(admin.get(API + "/status"), "the session after refused changes")
    ok(s2.get(API + "/status"), "the other session after refused changes")
    old = {"the changing session": admin.sid, "another session": s2.sid}
    r = ok(admin.post(API + "/auth/password", {"current": PASSWORD, "password": new}), "password change")
    assert any(re.match(r"__Host-fgsid=;.*Max-Age=0", v) for v in r.header_all("Set-Cookie")), r.summary()
    for what, sid in old.items():
        expect(m.client().get(API + "/status", cookie="__Host-fgsid=" + sid), 401, what + " after the change")
    expect(m.client().login(PASSWORD), 401, "the old password")
    ok(m.login(new).get(API + "/status"), "the new password")
    ok(m.client().get("/metrics", headers=[("Authorization", m.client().basic(new))]), "/metrics with the new password")
    expect(m.client().get("/metrics", headers=[("Authorization", m.client().basic(PASSWORD))]), 401,
           "/metrics with the old password")


def test_login_throttling_per_client_address(env):
    """Five wrong passwords, then 429 with Retry-After (and the security headers); while
    throttled the right password is refused too, whatever X-Forwarded-For / Forwarded /
    X-Real-IP say; another source address is not throttled (even claiming to be the
    throttled one); after Retry-After the right password works. The audit log names the
    real address, never a header's."""
    fg, m, admin, (a, b) = stack(env)
    c = m.client()
    spoof = [("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.8"),
             ("X-Real-IP", "203.0.113.9")]
    statuses = [c.login("wrong password %d" % i, headers=[spoof[i % 3]]).status for i in range(5)]
    assert statuses == [401] * 5, "the first five wrong passwords: %s" % statuses
    seen, r429 = first_throttle(lambda: c.login("wrong again"))
    assert r429 is not None and seen.index(429) <= 1, "no 429 after five wrong passwords: %s" % seen
    ra = r429.header("Retry-After") or ""
    assert ra.isdigit() and 1 <= int(ra) <= 900, r429.summary()
    assert_security_headers(r429, "429")
    assert not r429.header_all("Set-Cookie")

    lengthen_throttle(lambda: c.login("wrong once more"))
    r = c.login(PASSWORD)
    assert r.status == 429 and not c.sid, "the right password while throttled: " + r.summary()
    for h in spoof + [("X-Forwarded-For", "127.0.0.2"), ("X-Forwarded-For", "203.0.113.1, 127.0.0.2")]:
        r = m.client().login(PASSWORD, headers=[h])
        assert r.status == 429, "%s: %s lifted the throttling: %s" % (h[0], h[1], r.summary())
    other = m.client(source="127.0.0.2")
    r = other.login(PASSWORD, headers=[("X-Forwarded-For", "127.0.0.1")])
    assert r.status == 200, "another client address must not be throttled: " + r.summary()
    wait = int(c.login(PASSWORD).header("Retry-After") or "0")
    time.sleep(wait + 0.2)
    wait_for(lambda: c.login(PASSWORD).status == 200, timeout=5, interval=0.3, msg="login after Retry-After")
    ok(c.get(API + "/status"), "status after a throttled period")
    # a success starts the count again
    for i in range(4):
        expect(m.client().login("wrong after success %d" % i), 401, "a wrong password after a success")

    fails = [e for e in m.audit_entries() if e[2] == "login-failed"]
    assert len(fails) >= 10, fails
    assert {e[1] for e in fails} == {"127.0.0.1"}, "failed logins with another address: %s" % fails
    assert not any("203.0.113" in "\t".join(e) for e in m.audit_entries()), "a header's address reached the audit log"
    assert any(e[2] == "login" and e[1] == "127.0.0.2" for e in m.audit_entries())


def test_throttling_not_reset_by_setup_calls(env):
    """Once the password is set, a POST /auth/setup (refused) must not wipe the client's
    failed-login count: otherwise four guesses + one setup call, repeated, is unlimited
    guessing."""
    fg, m, admin, (a, b) = stack(env)
    c = m.client()
    for i in range(4):
        expect(c.login("guess %d" % i), 401, "guess %d" % i)
    r = c.post(API + "/auth/setup", {"setupCode": "0000-0000-0000", "password": "attacker password"})
    assert r.status in (400, 403), r.summary()
    seen, r429 = first_throttle(lambda: c.login("guess 4"), n=3)
    assert r429 is not None, (
        "after 4 wrong passwords, a refused POST /auth/setup and %d more wrong passwords the "
        "client is still not throttled (%s): the setup call reset the failure count" % (len(seen), seen))


def test_metrics_basic_auth_is_throttled(env):
    """Basic credentials on /metrics check the same admin password: wrong ones must count
    toward the login throttling, or /metrics is an unthrottled password oracle."""
    fg, m, admin, (a, b) = stack(env)
    c = m.client()
    seen = [c.get("/metrics", headers=[("Authorization", c.basic("guess %d" % i))]).status for i in range(8)]
    login = c.login(PASSWORD)
    assert 429 in seen or login.status == 429, (
        "8 wrong passwords on /metrics (Basic) in a row were never throttled (%s); a login "
        "right after them: %d" % (seen, login.status))


def test_security_headers_on_every_answer(env):
    """CSP (scripts from 'self' only, no unsafe-inline, frame-ancestors 'none'), nosniff,
    no-referrer and HSTS on assets, API answers and every error (400, 401, 403, 404, 405,
    411, 413, malformed requests); API answers are no-store."""
    fg, m, admin, (a, b) = stack(env)
    anon = m.client()
    answers = [
        ("GET /", anon.get("/"), 200),
        ("GET /index.html", anon.get("/index.html"), 200),
        ("HEAD /", anon.request("HEAD", "/"), 200),
        ("auth state", anon.get(API + "/auth/state"), 200),
        ("status", admin.get(API + "/status"), 200),
        ("unauthenticated", anon.get(API + "/status"), 401),
        ("unauthenticated metrics", anon.get("/metrics"), 401),
        ("no CSRF token", admin.post(API + "/farms/web/reset", csrf=False), 403),
        ("unknown route", admin.get(API + "/nope"), 404),
        ("wrong method", admin.get(API + "/farms/web/state"), 405),
        ("bad JSON", admin.put(API + "/rules", "[1,"), 400),
        ("validation error", admin.put(API + "/farms/web", farm("web", [server(0)])), 400),
        ("wrong setup", anon.post(API + "/auth/setup", {"setupCode": "x", "password": "y" * 12}), 400),
        ("malformed request", anon.raw(b"GARBAGE\r\n\r\n"), 400),
        ("chunked body", anon.raw(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 411),
        ("huge body", anon.raw(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 100000000\r\n\r\n"), 413),
    ]
    for what, r, status in answers:
        assert r.status == status, "%s: expected %d: %s" % (what, status, r.summary())
        assert_security_headers(r, what)
        if r.header("Content-Type", "").startswith("application/json"):
            assert "no-store" in (r.header("Cache-Control") or ""), "%s: %s" % (what, r.summary(900))
    # no CORS: another origin never gets to read an answer (the CSRF token of auth/state)
    for r in (admin.get(API + "/auth/state", headers=[("Origin", "https://evil.example")]),
              admin.request("OPTIONS", API + "/status", origin="https://evil.example",
                            headers=[("Access-Control-Request-Method", "GET")])):
        assert not [k for k, _ in r.headers if k.lower().startswith("access-control-")], r.summary(900)
    assert "text/html" in answers[0][1].header("Content-Type", "")
    for attrs in re.findall(rb"<script\b([^>]*)>", answers[0][1].body, re.I):
        assert b"src=" in attrs, "an inline script in index.html (the CSP forbids it): %r" % attrs


def test_management_not_served_on_data_plane(env):
    """A data-plane listener never answers as the management plane, whatever the Host
    header (the management host:port, localhost) or path: the data plane's own routing
    (404 without a rule, the backend with one). The configuration refuses a data listener
    on the management port; the management port speaks only TLS."""
    fg, m, admin, (a, b) = stack(env)
    ui = ok(admin.get("/"), "the UI").body
    hosts = ["%s:%d" % (m.host, m.port), "localhost:%d" % m.port, "127.0.0.1", "localhost"]
    for h in hosts:
        for p in ("/", "/index.html", API + "/auth/state", API + "/status", "/metrics"):
            r = http_request(fg.port, "GET", p, host=h)
            assert r.status == 404, "data plane, Host %s, %s: %s" % (h, p, r.summary())
            assert b"passwordSet" not in r.body and r.body != ui and b"farmgate_server" not in r.body
        r = http_request(fg.port, "POST", API + "/auth/login", host=h,
                         headers=[("Content-Type", "application/json"), ("Origin", m.origin)],
                         body=json.dumps({"password": PASSWORD}).encode())
        assert r.status == 404 and not r.header_all("Set-Cookie"), r.summary()
    r = http_request(fg.port, "GET", API + "/auth/state", host=HOST)
    assert r.status == 200 and r.header("X-Backend") in ("A", "B"), "Host web.local goes to the farm: " + r.summary()
    assert b"passwordSet" not in r.body

    before = read_bytes(fg.config_path)
    conf = json.loads(before)
    conf["listeners"].append({"address": "127.0.0.1", "port": m.port})
    r = expect(admin.put(API + "/config", conf), 400, "a data listener on the management port")
    assert (r.json().get("path") or "").startswith("$.management"), r.text
    conf["listeners"][-1]["address"] = "0.0.0.0"
    r = expect(admin.put(API + "/config", conf), 400, "a wildcard data listener on the management port")
    assert read_bytes(fg.config_path) == before
    bad = json.loads(before)
    bad["listeners"][0]["port"] = m.port
    p = env.cli("-t", "-c", env.write_json("same-port.json", bad))
    assert p.returncode != 0 and "$.management" in p.output, p.output

    got = raw_request(m.port, b"GET /api/v1/auth/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", read_timeout=3)
    assert not got.startswith(b"HTTP/") and b"passwordSet" not in got, "plain HTTP was answered: %r" % got[:200]


# --------------------------------------------------------------------------
# 4. the audit log
# --------------------------------------------------------------------------

def test_audit_log_records_who_did_what(env):
    """setup, login, failed logins (with the client's real address), config changes (and
    refused ones), server and farm state changes, counter resets, logout and password change
    are in GET /audit in order with an ISO time and the client IP; the file is 0600, one
    line per event even when a value holds control characters."""
    fg, m, admin, (a, b) = stack(env)
    expect(m.client().login("wrong one"), 401, "a wrong password")
    expect(m.client(source="127.0.0.2").login("wrong two"), 401, "a wrong password from 127.0.0.2")
    c = m.login()
    ok(c.post(API + "/farms", farm("audited", [server(b.port)])), "add a farm")
    expect(c.put(API + "/farms/web", farm("web", [server(a.port, weight=-3)])), 400, "a refused change")
    ok(c.post(API + "/farms/web/servers/%s/state" % sname(a.port), {"state": "DisallowNewConnections"}), "drain")
    ok(c.post(API + "/farms/web/state", {"state": "Offline"}), "offline")
    ok(c.post(API + "/farms/web/state", {"state": "Online"}), "online")
    ok(c.post(API + "/farms/web/reset"), "reset")
    c.post(API + "/farms/web/state", {"state": "Offline\n2099-01-01T00:00:00Z\t6.6.6.6\tlogin\t"})
    ok(c.post(API + "/auth/logout"), "logout")
    ok(admin.post(API + "/auth/password", {"current": PASSWORD, "password": "another fine passphrase"}),
       "password change")
    viewer = m.login("another fine passphrase")
    entries = ok(viewer.get(API + "/audit"), "audit").json()["entries"]
    want = [("password-setup", "127.0.0.1", ""), ("login-failed", "127.0.0.1", ""),
            ("login-failed", "127.0.0.2", ""), ("login", "127.0.0.1", ""),
            ("config", "127.0.0.1", "audited"), ("config-refused", "127.0.0.1", "weight"),
            ("server-state", "127.0.0.1", "DisallowNewConnections"),
            ("farm-state", "127.0.0.1", "Offline"), ("farm-state", "127.0.0.1", "Online"),
            ("farm-reset", "127.0.0.1", "web"), ("logout", "127.0.0.1", ""),
            ("password-change", "127.0.0.1", ""), ("login", "127.0.0.1", "")]
    i = 0
    for e in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"]), e
        assert e["ip"] in ("127.0.0.1", "127.0.0.2"), "an entry with a forged address: %s" % e
        if i < len(want) and e["action"] == want[i][0] and e["ip"] == want[i][1] and want[i][2] in e["detail"]:
            i += 1
    assert i == len(want), "missing or out of order from %s: %s\nin %s" % (
        want[i], want[i:], json.dumps(entries, indent=1))
    sstate = [e for e in entries if e["action"] == "server-state"][0]
    assert sname(a.port) in sstate["detail"] and "web" in sstate["detail"], sstate
    p = os.path.join(m.data_dir, "audit.log")
    assert mode_of(p) == 0o600, "audit.log mode %o" % mode_of(p)
    lines = read_bytes(p).decode().split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        f = line.split("\t")
        assert len(f) >= 4 and f[1] in ("127.0.0.1", "127.0.0.2"), "a forged or torn audit line: %r" % line
    assert len(lines) - 1 == len(entries), "GET /audit and the file disagree"
    assert len(entries) == len(m.audit_entries())


# --------------------------------------------------------------------------
# 5. tokens, logs and connections
# --------------------------------------------------------------------------

TOKEN = "hsm1"
SECURE_HOST = "secure.local"


def _token_stack(env, tok, extra_tokens=(), farms=None, rules=None):
    """farmgated + farmgate-mgmt with tok configured as "hsm1" in $.tokens (and extra_tokens
    after it) and no farm using it; backend A behind farm "web". Returns (fg, m, admin, a)."""
    a = env.backend(name="A")
    cfg = make_config(farms=[farm("web", [server(a.port)])] + list(farms or []),
                      rules=[arr_lb_rule("web", HOST)] + list(rules or []),
                      tokens=[tok.token_cfg(TOKEN)] + list(extra_tokens))
    fg, m = start_stack(env, cfg)
    return fg, m, m.setup(), a


def _token_serials(tok):
    """{token label: serial} as pkcs11-tool -L reads them from SoftHSM directly."""
    out = run(["/usr/bin/pkcs11-tool", "--module", SOFTHSM, "-L"], env=tok.penv, cwd=tok.dir)[1]
    got = {}
    for block in out.split("Slot ")[1:]:
        lab = re.search(r"token label\s*:\s*(\S+)", block)
        ser = re.search(r"serial num\s*:\s*(\S+)", block)
        if lab and ser:
            got[lab.group(1)] = ser.group(1)
    return got


def _not_after_iso(crt):
    """The certificate's notAfter as 2026-01-02T03:04:05Z (openssl x509 -dateopt iso_8601)."""
    out = run([OPENSSL, "x509", "-in", crt, "-noout", "-enddate", "-dateopt", "iso_8601"])[1]
    return out.strip().split("=", 1)[1].replace(" ", "T")


def _csr_ec_point(path):
    """The uncompressed EC point (hex) of a P-256 CSR's public key, read by openssl."""
    out = run([OPENSSL, "req", "-in", path, "-noout", "-pubkey"])[1]
    der = base64.b64decode("".join(l for l in out.splitlines() if l and not l.startswith("-----")))
    assert len(der) == 91, "not a P-256 SubjectPublicKeyInfo (%d bytes): %s" % (len(der), out)
    return der[-65:].hex()


def _token_ec_point(tok, key_id):
    """The EC point (hex) of the public key object with CKA_ID key_id, as pkcs11-tool lists
    it (its DER OCTET STRING wrapper removed)."""
    objs, out = tok.objects()
    pts = [o.get("EC_POINT", "").lower() for kind, o in objs
           if kind.startswith("Public Key Object") and o.get("ID", "").lower() == key_id.lower()]
    assert len(pts) == 1 and pts[0], "expected one EC public key with id %s on the token:\n%s" % (key_id, out)
    p = pts[0]
    return p[4:] if p.startswith("0441") else p


def _private_key_labels(tok):
    return [o.get("label") for kind, o in tok.objects()[0] if kind.startswith("Private Key Object")]


def test_tokens_listed_with_their_certificates_before_any_farm_uses_them(env):
    """A SoftHSM token in $.tokens that no farm uses yet is opened and listed by GET /tokens
    (label, serial as pkcs11-tool reads them, logged in, mechanisms, certificateCount);
    GET /tokens/{t}/certificates lists the certificate made on it beforehand with the
    SHA-1 / SHA-256 of the certificate file, its key's id, subject, issuer, notAfter and key
    type. An unknown token is 404 (GET and POST), other paths under /tokens 404."""
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    cert = tok.client_cert(ca, "ec256", "appliance")
    fg, m, admin, a = _token_stack(env, tok)

    toks = ok(admin.get(API + "/tokens"), "GET /tokens").json()["tokens"]
    assert [t.get("name") for t in toks] == [TOKEN], "a configured token no farm uses must be listed: %s" % toks
    t = toks[0]
    assert t["module"] == SOFTHSM and t["uri"] == "pkcs11:token=" + tok.label, t
    assert t["loggedIn"] is True, "the token (with its pinFile) is not logged in: %s" % t
    assert t["label"] == tok.label, t
    serials = _token_serials(tok)
    assert t["serial"] == serials.get(tok.label), "serial %r, pkcs11-tool says %r" % (t["serial"], serials)
    want_mechs = {"RSA-PKCS", "ECDSA", "RSA-PKCS-KEY-PAIR-GEN", "EC-KEY-PAIR-GEN"}
    assert want_mechs <= set(t["mechanisms"]), "SoftHSM's mechanisms: %s" % t["mechanisms"]
    assert t["certificateCount"] == 1, t
    assert t["signatures"] == 0 and t["signatureErrors"] == 0, t
    assert isinstance(t["pinFlags"], str), t

    certs = ok(admin.get(API + "/tokens/%s/certificates" % TOKEN), "certificates").json()["certificates"]
    assert len(certs) == 1, certs
    c = certs[0]
    assert c["sha1"] == cert.sha1 and c["sha256"] == cert.sha256, \
        "thumbprints %s / %s, the certificate file's are %s / %s" % (c["sha1"], c["sha256"], cert.sha1, cert.sha256)
    assert re.fullmatch(r"[0-9A-F]{40}", c["sha1"]) and re.fullmatch(r"[0-9A-F]{64}", c["sha256"]), c
    assert c["label"] == "appliance" and c["id"].lower() == cert.key_id, c
    assert "CN=appliance" in c["subject"] and "O=Farmgate tests" in c["subject"], c
    assert "CN=Farmgate test ca" in c["issuer"], c
    assert c["notAfter"] == _not_after_iso(cert.path), (c["notAfter"], _not_after_iso(cert.path))
    assert c["keyType"] == "EC 256", c
    conf = json.loads(read_bytes(fg.config_path))
    assert not any("clientCert" in json.dumps(f) for f in conf["webFarms"]), "no farm uses the token"

    r = expect(admin.get(API + "/tokens/nope/certificates"), 404, "certificates of an unknown token")
    assert "nope" in r.json()["error"], r.text
    expect(admin.post(API + "/tokens/nope/keys", {"type": "EC-P256", "label": "k"}), 404,
           "keygen on an unknown token")
    for p in ("/tokens/", "/tokens/%s" % TOKEN, "/tokens/%s/keys" % TOKEN, "/tokens/%s/certificates/x" % TOKEN):
        expect(admin.get(API + p), 404, "GET " + p)
    expect(admin.post(API + "/tokens/%s/nothing" % TOKEN, {}), 404, "POST to an unknown token route")
    # nothing above made anything on the token
    assert ok(admin.get(API + "/tokens"), "GET /tokens").json()["tokens"][0]["certificateCount"] == 1
    assert _private_key_labels(tok) == ["appliance"], _private_key_labels(tok)


def test_tokens_list_follows_the_configuration(env):
    """GET /tokens lists the tokens of the running configuration, not every token opened
    since the start: after PUT /config renames hsm1 (same token, same PIN file) only the new
    name is listed and the old one is 404; after $.tokens is emptied none is listed."""
    tok = SoftToken(env)
    fg, m, admin, a = _token_stack(env, tok)
    conf = json.loads(read_bytes(fg.config_path))
    conf["tokens"] = [tok.token_cfg("renamed")]
    ok(admin.put(API + "/config", conf), "rename the token")
    names = [t["name"] for t in ok(admin.get(API + "/tokens"), "tokens").json()["tokens"]]
    assert names == ["renamed"], "GET /tokens after renaming hsm1 to renamed: %s" % names
    expect(admin.get(API + "/tokens/%s/certificates" % TOKEN), 404, "the old name")
    ok(admin.get(API + "/tokens/renamed/certificates"), "the new name")
    conf["tokens"] = []
    ok(admin.put(API + "/config", conf), "no tokens")
    names = [t["name"] for t in ok(admin.get(API + "/tokens"), "tokens").json()["tokens"]]
    assert names == [], "GET /tokens with $.tokens empty: %s" % names
    expect(admin.post(API + "/tokens/renamed/keys", {"type": "EC-P256", "label": "k"}), 404,
           "keygen on a token no longer configured")


def test_pin_file_with_a_wrong_pin_is_refused(env):
    """PUT /config pointing the token at a PIN file with a wrong PIN is refused (farmgated
    cannot log in with it: `farmgated -t` says so, and a restart would fail), the file left
    as it was, even though the token is already logged in with the old PIN."""
    tok = SoftToken(env)
    fg, m, admin, a = _token_stack(env, tok)
    before = read_bytes(fg.config_path)
    wrong = tok.write_pin("Wrong-PIN-5d2c9e", "wrong.pin")
    conf = json.loads(before)
    conf["tokens"] = [tok.token_cfg(TOKEN, pin_file=wrong)]
    p = env.cli("-t", "-c", env.write_json("wrong-pin.json", conf))
    assert p.returncode != 0 and "PIN" in p.output, "farmgated -t with the wrong PIN file: %s" % p.output
    r = admin.put(API + "/config", conf)
    assert r.status in (400, 409) and "$.tokens[0]" in r.text, (
        "PUT /config with a pinFile holding a wrong PIN was answered %s although `farmgated -t` "
        "refuses the same file (%s): the running farmgated took it because the token was already "
        "logged in" % (r.summary(), p.output.strip()))
    assert read_bytes(fg.config_path) == before, "the refused configuration stayed on disk"


def _secure_farm(port, ca_file, thumb=None):
    proto = {"preserveHostHeader": False, "backendCaFile": ca_file}
    if thumb:
        proto["clientCertHash"] = thumb
    return {"name": "secure",
            "servers": [{"address": "127.0.0.1", "httpsPort": port, "hostName": "secure.internal"}],
            "protocol": proto}


def _secure_rule():
    return {"name": "ARR_secure_loadbalance", "patternSyntax": "Wildcard", "stopProcessing": True,
            "match": {"url": "*"}, "conditions": [{"input": "{HTTP_HOST}", "pattern": SECURE_HOST}],
            "action": {"type": "Rewrite", "url": "https://secure/{R:0}"}}


def test_token_keygen_csr_import_audit_and_use_by_a_farm(env):
    """Through the API, on a token no farm uses: POST /keys makes an EC-P256 key (sensitive,
    never extractable on the token; a second one with the same label is 400 naming it, a bad
    type 400); POST /csr gives a CSR that openssl verifies, with the subject and SAN asked
    for and the token key's public key; signed by a CA and imported with POST /certificates
    it answers the certificate's thumbprints and is listed beside its key; the same
    certificate again is 400 "already on token", one whose key is not on the token 400. Its
    SHA-256 as farm secure's clientCertHash (PUT /farms/secure) applies and the TLS backend,
    which refused the farm before, sees that client certificate. Without the CSRF token or
    with another Origin these POSTs are 403 and do nothing; the audit log has exactly the
    three operations that happened, each with the client's address."""
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    crt, key = ca.server_cert("secure-be", ["DNS:secure.internal"])
    ng = TlsNginx(env, crt, key, client_ca=ca.crt, name="secure").start()
    fg, m, admin, a = _token_stack(env, tok, farms=[_secure_farm(ng.port, ca.crt)], rules=[_secure_rule()])
    r = dp_get(fg, "/before", host=SECURE_HOST)
    assert r.status == 400 and b"user=" not in r.body, "farm secure without a client certificate: " + r.summary()
    T = API + "/tokens/" + TOKEN
    keygen = {"type": "EC-P256", "label": "web-client"}
    csr_req = {"keyLabel": "web-client", "subject": "/CN=x.test/O=Farmgate", "san": ["DNS:x.test"]}

    # CSRF / Origin first: refused, and nothing made on the token
    for what, kw in (("no CSRF token", dict(csrf=False)), ("a wrong CSRF token", dict(csrf="0" * 32)),
                     ("a foreign Origin", dict(origin="https://evil.example")),
                     ("neither Origin nor Sec-Fetch-Site", dict(origin=False)),
                     ("Sec-Fetch-Site: cross-site", dict(headers=[("Sec-Fetch-Site", "cross-site")]))):
        for path, body in (("/keys", keygen), ("/csr", csr_req), ("/certificates", {"pem": "x"})):
            r = admin.post(T + path, body, **kw)
            assert r.status == 403, "POST %s with %s: %s" % (path, what, r.summary())
    assert _private_key_labels(tok) == [], "a refused keygen made a key: %s" % _private_key_labels(tok)

    r = ok(admin.post(T + "/keys", keygen), "keygen").json()
    assert r.get("label") == "web-client" and re.fullmatch(r"[0-9a-f]+", r.get("id") or ""), r
    key_id = r["id"]
    access, listing = tok.private_key_access(key_id=key_id)
    assert {"sensitive", "never extractable", "local"} <= access and "extractable" not in access, \
        "the generated key's attributes: %s\n%s" % (access, listing)
    r = expect(admin.post(T + "/keys", keygen), 400, "a second key labelled web-client")
    assert "web-client" in r.json()["error"], r.text
    for bad in ({"type": "EC-P521", "label": "k2"}, {"type": "DSA-1024", "label": "k2"},
                {"type": "", "label": "k2"}, {"label": "k2"}, {"type": "EC-P256"},
                {"type": "EC-P256", "label": ""}):
        expect(admin.post(T + "/keys", bad), 400, "keygen with %s" % bad)
    expect(admin.post(T + "/keys", "not json"), 400, "keygen with a body that is not JSON")
    assert _private_key_labels(tok) == ["web-client"], _private_key_labels(tok)

    # the CSR, asked for from another address (the audit log must name it)
    other = m.login(source="127.0.0.2")
    r = ok(other.post(T + "/csr", csr_req), "CSR").json()
    pem = r.get("csr") or ""
    assert pem.startswith("-----BEGIN CERTIFICATE REQUEST-----"), r
    csr_path = env.path("x.csr")
    with open(csr_path, "w") as f:
        f.write(pem)
    rc, out = run([OPENSSL, "req", "-in", csr_path, "-verify", "-noout", "-text"], check=False)
    assert rc == 0 and "verify OK" in out, "openssl req -verify refused the CSR:\n" + out
    assert re.search(r"Subject: CN ?= ?x\.test, O ?= ?Farmgate\n", out), out
    assert "DNS:x.test" in out, "the CSR lacks the SAN asked for:\n" + out
    assert _csr_ec_point(csr_path) == _token_ec_point(tok, key_id), \
        "the CSR's public key is not the token key's"
    for bad, what in (({"keyLabel": "no-such-key", "subject": "/CN=y"}, "no-such-key"),
                      ({"keyLabel": "web-client"}, "subject"),
                      ({"keyLabel": "web-client", "subject": "CN=y"}, "CN=y"),
                      ({"keyLabel": "web-client", "subject": "/CN=y", "san": ["BOGUS:y"]}, "BOGUS")):
        r = expect(admin.post(T + "/csr", bad), 400, "CSR with %s" % bad)
        assert what in r.json()["error"], "the error should name %r: %s" % (what, r.text)

    # signed by the CA, imported beside its key
    crt_path = ca.sign_csr(csr_path, env.path("x.crt"), san=["DNS:x.test"], usage="clientAuth")
    sha1, sha256 = sha1_hex(crt_path), sha256_hex(crt_path)
    with open(crt_path) as f:
        cert_pem = f.read()
    r = ok(admin.post(T + "/certificates", {"pem": cert_pem}), "import").json()
    assert r.get("sha1") == sha1 and r.get("sha256") == sha256, \
        "import answered %s; the certificate's thumbprints are %s / %s" % (r, sha1, sha256)
    assert r.get("label") == "web-client", "the certificate should take its key's label: %s" % r
    certs = ok(admin.get(T + "/certificates"), "certificates").json()["certificates"]
    mine = [c for c in certs if c["sha256"] == sha256]
    assert len(mine) == 1 and mine[0]["id"].lower() == key_id.lower() and mine[0]["sha1"] == sha1, \
        "the imported certificate is not listed beside its key (id %s): %s" % (key_id, certs)
    assert "CN=x.test" in mine[0]["subject"] and mine[0]["keyType"] == "EC 256", mine[0]
    r = expect(admin.post(T + "/certificates", {"pem": cert_pem}), 400, "the same certificate again")
    assert "already on token" in r.json()["error"], r.text
    sw_crt, _ = ca.software_client("sw-client", "sw-client", key_type="ec")
    with open(sw_crt) as f:
        r = expect(admin.post(T + "/certificates", {"pem": f.read()}), 400,
                   "a certificate whose key is not on the token")
    assert sha1_hex(sw_crt) in r.json()["error"] or "private key" in r.json()["error"], r.text
    for bad in ({"pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, {"pem": ""}, {}):
        expect(admin.post(T + "/certificates", bad), 400, "import of %r" % bad)
    certs = ok(admin.get(T + "/certificates"), "certificates").json()["certificates"]
    assert [c["sha256"] for c in certs] == [sha256], "only the imported certificate: %s" % certs
    assert ok(admin.get(API + "/tokens"), "tokens").json()["tokens"][0]["certificateCount"] == 1

    # used by a farm through PUT /farms/secure
    f = ok(admin.get(API + "/farms/secure"), "GET farm secure").json()
    f["protocol"]["clientCertHash"] = sha256
    ok(admin.put(API + "/farms/secure", f), "clientCertHash = the imported certificate's SHA-256")
    r = dp_get(fg, "/through/the/token", host=SECURE_HOST)
    assert r.status == 200 and b"uri=/through/the/token" in r.body, \
        "farm secure after the certificate was picked: " + r.summary()
    fps = wait_for(lambda: [l for l in ng.access_lines() if "/through/the/token" in l], timeout=5,
                   msg="nginx's access log line")
    assert ("fp=" + sha1.lower()) in fps[-1], \
        "the TLS backend did not see the imported certificate (SHA-1 %s): %s" % (sha1, fps)
    st = ok(admin.get(API + "/tokens"), "tokens").json()["tokens"][0]
    assert st["signatures"] >= 1 and st["signatureErrors"] == 0, "the handshake signed on the token: %s" % st

    entries = ok(admin.get(API + "/audit"), "audit").json()["entries"]
    got = [(e["ip"], e["detail"]) for e in entries if e["action"] == "token"]
    want = [("127.0.0.1", "token-keygen"), ("127.0.0.2", "token-csr"), ("127.0.0.1", "token-import-cert")]
    assert len(got) == len(want) and all(ip == w[0] and w[1] in d and TOKEN in d
                                         for (ip, d), w in zip(got, want)), \
        "the audit log's token entries: %s, expected %s (refused requests are not operations)" % (got, want)


PIN_FILE = "Pin-File-7c41e9b2"      # hsm1's, in its pinFile
PIN_TYPED = "Pin-Typed-3fa08d65"    # hsm2's, entered through the API
PIN_WRONG = "Pin-Wrong-91d2c4e7"    # tried on hsm2 first
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (info|warning|error): \S")


def test_logs_route_and_no_pin_anywhere(env):
    """GET /logs is {"lines": [...]}, farmgated's recent log lines oldest first (time,
    level, message, each one a line of farmgated's own log): its start and its tokens, then
    "configuration reloaded" after a change applied through the API and the server state
    change. Two tokens with distinctive PINs: hsm1 reads its PIN from its pinFile, hsm2 has
    none and waits (needsPin) until POST /tokens/hsm2/pin; a wrong PIN is 400 and leaves it
    waiting, a PIN for a token that is not waiting is 400, the right one logs it in (audited
    once). No PIN, not even the wrong one, appears in any API answer, /logs line, audit
    entry, farmgated's or farmgate-mgmt's output or farmgate-mgmt's data directory."""
    tok = SoftToken(env, user_pin=PIN_FILE)
    run([tok.ctl_bin, "token", "init", "--module", SOFTHSM, "--label", "waiting", "--so-pin-env", "FG_SO_PIN",
         "--pin-env", "FG_PIN"], env=dict(tok.penv, FG_PIN=PIN_TYPED), cwd=tok.dir)
    fg, m, admin, a = _token_stack(env, tok, extra_tokens=[
        {"name": "hsm2", "module": SOFTHSM, "uri": "pkcs11:token=waiting"}])
    answers = []

    def keep(r):
        answers.append((r.status, r.text))
        return r

    def log_lines(what):
        r = keep(ok(admin.get(API + "/logs"), "GET /logs " + what))
        ls = r.json().get("lines")
        assert isinstance(ls, list) and ls and all(isinstance(x, str) for x in ls), r.text
        bad = [x for x in ls if not LOG_LINE.match(x)]
        assert not bad, "/logs lines without a time and a level: %s" % bad
        own = fg.log_text()
        foreign = [x for x in ls if x.split("Z ", 1)[1] not in own]
        assert not foreign, "/logs lines that are not in farmgated's log: %s" % foreign
        return ls

    l0 = log_lines("at start")
    assert any("farmgated" in x and "started" in x for x in l0), l0
    assert any(x.split("Z ", 1)[1].startswith("info: token hsm1") for x in l0), "token hsm1 opened: %s" % l0
    assert any(x.split("Z ", 1)[1].startswith("warning: token hsm2") and "PIN" in x for x in l0), \
        "hsm2 waiting for its PIN: %s" % l0
    assert not any("configuration reloaded" in x for x in l0), l0

    ok(admin.put(API + "/farms/web", farm("web", [server(a.port, weight=5)])), "a change")
    l1 = log_lines("after a change")
    assert l1[:len(l0)] == l0, "older lines changed:\n%s\n%s" % (l0, l1)
    assert [x for x in l1[len(l0):] if "info: configuration reloaded" in x], \
        "no \"configuration reloaded\" after an applied change; new lines: %s" % l1[len(l0):]
    ok(admin.post(API + "/farms/web/servers/%s/state" % sname(a.port), {"state": "DisallowNewConnections"}),
       "drain A")
    l2 = log_lines("after a server state change")
    assert [x for x in l2[len(l1):] if "farm web" in x and sname(a.port) in x and "DisallowNewConnections" in x], \
        "no line for the state change; new lines: %s" % l2[len(l1):]

    toks = {t["name"]: t for t in keep(ok(admin.get(API + "/tokens"), "tokens")).json()["tokens"]}
    assert toks["hsm1"]["loggedIn"] is True and toks["hsm1"].get("needsPin") is False, toks["hsm1"]
    assert toks["hsm2"]["loggedIn"] is False and toks["hsm2"].get("needsPin") is True, toks["hsm2"]
    keep(expect(admin.post(API + "/tokens/hsm2/pin", {"pin": PIN_WRONG}), 400, "a wrong PIN"))
    t2 = [t for t in keep(admin.get(API + "/tokens")).json()["tokens"] if t["name"] == "hsm2"][0]
    assert t2["loggedIn"] is False and t2["needsPin"] is True, "after a wrong PIN: %s" % t2
    keep(expect(admin.post(API + "/tokens/hsm1/pin", {"pin": PIN_FILE}), 400, "a PIN for a token not waiting"))
    keep(expect(admin.post(API + "/tokens/hsm2/pin", {"pin": PIN_TYPED}, csrf=False), 403, "a PIN without CSRF"))
    keep(ok(admin.post(API + "/tokens/hsm2/pin", {"pin": PIN_TYPED}), "the right PIN"))
    t2 = [t for t in keep(admin.get(API + "/tokens")).json()["tokens"] if t["name"] == "hsm2"][0]
    assert t2["loggedIn"] is True and t2["needsPin"] is False, "after the right PIN: %s" % t2
    l3 = log_lines("after PIN entry")
    new = l3[len(l2):]
    assert [x for x in new if "warning:" in x and "hsm2" in x], "the refused PIN is not in the log: %s" % new
    assert [x for x in new if "info:" in x and "hsm2" in x and "logged in" in x], "hsm2's login: %s" % new

    for p in ("/tokens", "/tokens/hsm1/certificates", "/tokens/hsm2/certificates", "/config", "/backup",
              "/farms", "/farms/web", "/rules", "/status", "/system", "/audit", "/logs"):
        keep(ok(admin.get(API + p), "GET " + p))
    keep(ok(admin.get("/metrics"), "GET /metrics"))
    logins = [e for e in keep(admin.get(API + "/audit")).json()["entries"] if e["action"] == "token"]
    assert len(logins) == 1 and "token-login" in logins[0]["detail"] and "hsm2" in logins[0]["detail"], \
        "the audit log's token entries (one PIN entry succeeded): %s" % logins

    places = [("answer %d (%d)" % (i, st), text) for i, (st, text) in enumerate(answers)]
    places += [("farmgated's log", fg.log_text()), ("farmgate-mgmt's log", m.log_text()),
               ("the configuration file", read_bytes(fg.config_path).decode("utf-8", "replace"))]
    for name in sorted(os.listdir(m.data_dir)):
        p = os.path.join(m.data_dir, name)
        if os.path.isfile(p):
            places.append(("%s in the data directory" % name, read_bytes(p).decode("latin-1")))
    for pin in (PIN_FILE, PIN_TYPED, PIN_WRONG):
        leaks = [where for where, text in places if pin in text]
        assert not leaks, "the PIN %s appears in %s" % (pin, leaks)
    assert len(places) > 25, len(places)


def _watch_close(sock, out, limit):
    """Reads sock until the peer closes it (or limit s); out: t (seconds), got (bytes), why."""
    t0 = time.monotonic()
    got = b""
    sock.settimeout(limit)
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                out["why"] = "closed"
                break
            got += d
    except socket.timeout:
        out["why"] = "still open"
    except (OSError, ssl.SSLError) as e:
        out["why"] = "closed (%r)" % e
    out["t"] = time.monotonic() - t0
    out["got"] = got


def _drip(sock, out, limit, every=1.0):
    """Sends one byte every `every` s on sock (a request body that never ends) until the
    peer closes it or limit s pass; out: t (seconds), got (bytes), why."""
    t0 = time.monotonic()
    got = b""
    out["why"] = "still open"
    sock.settimeout(every)
    while time.monotonic() - t0 < limit:
        try:
            d = sock.recv(4096)
            if not d:
                out["why"] = "closed"
                break
            got += d
            continue
        except socket.timeout:
            pass
        except (OSError, ssl.SSLError) as e:
            out["why"] = "closed (%r)" % e
            break
        try:
            sock.sendall(b" ")
        except (OSError, ssl.SSLError) as e:
            out["why"] = "closed (send: %r)" % e
            break
    out["t"] = time.monotonic() - t0
    out["got"] = got


def _try_open(client, what):
    """A MgmtConnection from client's address that the server answers (GET /auth/state);
    None when the server closes it."""
    c = client.keepalive(connect=False)
    try:
        c.connect()
        r = c.get(API + "/auth/state")
    except (OSError, ssl.SSLError, http.client.HTTPException):
        c.close()
        return None
    assert r.status == 200, "%s: %s" % (what, r.summary())
    return c


def test_keepalive_per_address_limit_and_stalled_heads(env):
    """Keep-alive: a dozen requests over one TLS connection (GET, HEAD, POST with bodies,
    errors, a static asset) are all answered correctly on the same socket; three pipelined
    requests in one write get three answers in order. One address gets at most 8 connections
    served at a time: with 8 open (each answered) the 9th is closed, while 127.0.0.2 is still
    served; closing one lets the next in. A half request head that stalls (127.0.0.3), a
    connection that never starts TLS (127.0.0.4) and a request body dripped one byte a second
    (127.0.0.5, unauthenticated POST /auth/login) are closed by the server within 25 s, while
    everything above runs: none of them can hold a connection slot for long."""
    fg, m, admin, (a,) = stack(env, nservers=1)
    limit = 25.0 + (5.0 if env.asan else 0.0)  # the daemon's timers are wall-clock: not scaled by env.slow
    # the slow parts first: their timers run while the rest of the test does
    half = m.client(source="127.0.0.3").connect()
    half.sendall(b"GET /api/v1/auth/state HTTP/1.1\r\nHost: %s:%d\r\nX-Stalled: " % (m.host.encode(), m.port))
    mute = socket.create_connection((m.host, m.port), timeout=10, source_address=("127.0.0.4", 0))
    slow = m.client(source="127.0.0.5").connect()
    slow.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{" % (m.host.encode(), m.port))
    watched = {"half": {}, "mute": {}, "slow": {}}
    watchers = [threading.Thread(target=_watch_close, args=(half, watched["half"], limit + 5)),
                threading.Thread(target=_watch_close, args=(mute, watched["mute"], limit + 5)),
                threading.Thread(target=_drip, args=(slow, watched["slow"], limit + 2))]
    for t in watchers:
        t.start()
    try:
        # keep-alive
        conn = admin.keepalive()
        seen = []

        def on_conn(r, status, what):
            seen.append(what)
            assert r.status == status, "%s (request %d on one connection): expected %d, got %s" % (
                what, len(seen), status, r.summary())
            assert "close" not in (r.header("Connection") or "").lower(), "%s: %s" % (what, r.summary())
            assert conn.open and conn.conn.sock.getsockname() == conn.local, \
                "%s: not on the same connection any more" % what
            return r
        st = on_conn(conn.get(API + "/auth/state"), 200, "auth state").json()
        assert st["loggedIn"] is True and st["csrfToken"] == admin.csrf, st
        on_conn(conn.post(API + "/farms/web/state", {"state": "Offline"}), 200, "farm Offline")
        assert fg.farm_status("web")["state"] == "Offline"
        r = on_conn(conn.request("HEAD", API + "/status"), 200, "HEAD status")
        assert r.body == b"" and int(r.header("Content-Length")) > 0, r.summary()
        on_conn(conn.get(API + "/nope"), 404, "an unknown route")
        on_conn(conn.post(API + "/farms/web/state", {"state": "Sideways"}), 400, "a bad state")
        on_conn(conn.post(API + "/farms/web/state", {"state": "Online"}, csrf=False), 403, "no CSRF token")
        on_conn(conn.post(API + "/farms/web/state", "{not json"), 400, "a body that is not JSON")
        assert fg.farm_status("web")["state"] == "Offline"
        on_conn(conn.post(API + "/farms/web/state", {"state": "Online"}), 200, "farm Online")
        st = on_conn(conn.get(API + "/status"), 200, "status").json()
        assert st["farms"][0]["state"] == "Online", st
        r = on_conn(conn.get("/"), 200, "the UI")
        assert b"<html" in r.body.lower(), r.summary()
        r = on_conn(conn.post(API + "/rules/test", {"url": "/x", "host": HOST}), 200, "rule test")
        assert r.json()["farm"] == "web", r.text
        r = on_conn(conn.get(API + "/audit"), 200, "audit")
        states = [e["detail"] for e in r.json()["entries"] if e["action"] == "farm-state"]
        assert len(states) == 2 and "Offline" in states[0] and "Online" in states[1], states
        conn.close()

        # pipelined: three requests in one write, answered in order
        hp = "%s:%d" % (m.host, m.port)
        cookie = ("Cookie", "__Host-fgsid=" + admin.sid)
        body = json.dumps({"url": "/p", "host": HOST}).encode()
        wire = (build_request("GET", API + "/auth/state", host=hp, headers=[cookie]) +
                build_request("POST", API + "/rules/test", host=hp, body=body,
                              headers=[cookie, ("X-CSRF-Token", admin.csrf), ("Origin", m.origin),
                                       ("Content-Type", "application/json")]) +
                build_request("GET", API + "/farms/web", host=hp, headers=[cookie, ("Connection", "close")]))
        rs = parse_responses(admin.exchange(wire))
        assert [r.status for r in rs] == [200, 200, 200], "pipelined answers: %s" % [r.summary() for r in rs]
        assert json.loads(rs[0].body)["loggedIn"] is True, rs[0].summary()
        assert json.loads(rs[1].body)["farm"] == "web", rs[1].summary()
        assert json.loads(rs[2].body)["name"] == "web", rs[2].summary()

        # at most 8 connections per address
        held = []
        try:
            for i in range(8):
                held.append(wait_for(lambda: _try_open(admin, "connection %d" % (i + 1)), timeout=5 * env.slow,
                                     interval=0.1, msg="connection %d of 8 from 127.0.0.1 to be served" % (i + 1)))
            for n in range(3):
                c = _try_open(admin, "a 9th connection")
                assert c is None, "a 9th concurrent connection from 127.0.0.1 was served"
            other = m.client(source="127.0.0.2")
            r = other.get(API + "/auth/state")
            assert r.status == 200, "127.0.0.2 while 127.0.0.1 holds 8 connections: " + r.summary()
            two = m.login(source="127.0.0.2")
            ok(two.get(API + "/status"), "a login from 127.0.0.2 while 127.0.0.1 holds 8 connections")
            for i, c in enumerate(held):
                r = c.get(API + "/status")
                assert r.status == 200, "held connection %d: %s" % (i + 1, r.summary())
            held.pop(0).close()
            held.append(wait_for(lambda: _try_open(admin, "the connection after one closed"), timeout=5 * env.slow,
                                 interval=0.1, msg="a new connection from 127.0.0.1 once one of 8 closed"))
            assert _try_open(admin, "a 9th connection again") is None, \
                "a 9th concurrent connection from 127.0.0.1 was served (after one was replaced)"
        finally:
            for c in held:
                c.close()
        ok(admin.get(API + "/status"), "127.0.0.1 once its connections closed")

        # the stalled ones
        for t in watchers:
            t.join(limit + 10)
    finally:
        for s in (half, mute, slow):
            s.close()
    h, u = watched["half"], watched["mute"]
    assert h.get("why", "").startswith("closed") and h["t"] <= limit, \
        "a half request head that stalls: %s after %.1fs (limit %.0fs)" % (h.get("why"), h.get("t", -1), limit)
    assert h["t"] > 1, "a half request head was dropped after %.2fs: slow typists need a chance" % h["t"]
    assert b"200 OK" not in h["got"], "the half request head was answered: %r" % h["got"][:200]
    assert u.get("why", "").startswith("closed") and u["t"] <= limit, \
        "a connection that never starts TLS: %s after %.1fs (limit %.0fs)" % (u.get("why"), u.get("t", -1), limit)
    ok(m.client(source="127.0.0.3").get(API + "/auth/state"), "127.0.0.3 after its stalled connection")
    w = watched["slow"]
    assert w.get("why", "").startswith("closed") and w["t"] <= limit, (
        "a request body dripped one byte a second (unauthenticated POST /auth/login, Content-Length "
        "1000) still held its connection after %.1fs (limit %.0fs): no deadline covers the body, so "
        "8 such connections per address, from 4 addresses, take all 32 slots and lock the "
        "administrator out" % (w.get("t", -1), limit))
    assert b"200 OK" not in w["got"], w["got"][:200]


# --------------------------------------------------------------------------
# system actions: reboot and factory reset through the helper (-x)
# --------------------------------------------------------------------------

SIGPIPE_BIT = 1 << (13 - 1)


def _wait_runs(env, runs, n, m, what):
    got = wait_for(lambda: len(helper_runs(runs)) >= n and helper_runs(runs), timeout=20 * env.slow,
                   msg="%s: the helper's run %d (farmgate-mgmt log:\n%s)" % (what, n, m.log_text()[-2000:]))
    return got


def test_system_reboot_and_factory_reset_run_the_helper(env):
    """With -x: GET /system lists both actions; GET / HEAD on them is 405, no CSRF token or a
    foreign Origin 403, a missing password 400, a factory reset without confirm 400, a wrong
    password 403 (audited as failed, counted by the login throttle): none of them runs the
    helper. The right password is 202 {"accepted": true} on a closing connection, audited,
    and the helper runs exactly once per action with argv [action], stdin and stdout on
    /dev/null, no signal ignored or blocked; it is reaped (no zombie child)."""
    helper, runs = system_helper(env)
    fg, m, admin, bes = stack(env, mgmt_args=["-x", helper])
    sysinfo = ok(admin.get(API + "/system"), "system").json()
    assert sysinfo["actions"] == ["reboot", "factory-reset"], sysinfo

    good = {"reboot": {"password": PASSWORD},
            "factory-reset": {"password": PASSWORD, "confirm": "factory-reset"}}
    for action in ("reboot", "factory-reset"):
        path = API + "/system/" + action
        for method in ("GET", "HEAD"):
            expect(admin.request(method, path), 405, "%s %s" % (method, path))
        for what, kw in (("no CSRF token", dict(csrf=False)), ("a wrong CSRF token", dict(csrf="0" * 32)),
                         ("a foreign Origin", dict(origin="https://evil.example"))):
            r = expect(admin.post(path, good[action], **kw), 403, "%s with %s" % (action, what))
            assert b"CSRF" in r.body, r.summary()
        r = expect(admin.post(path, {"confirm": "factory-reset"}), 400, action + " without a password")
        assert b"password" in r.body, r.summary()
        r = expect(admin.post(path, dict(good[action], password="not the password")), 403,
                   action + " with a wrong password")
        assert "wrong password" in r.json()["error"], r.summary()
    for confirm in (None, "yes", "Factory-Reset", ""):
        body = {"password": PASSWORD}
        if confirm is not None:
            body["confirm"] = confirm
        r = expect(admin.post(API + "/system/factory-reset", body), 400, "factory reset with confirm %r" % confirm)
        assert "factory-reset" in r.json()["error"], r.summary()
    expect(admin.post(API + "/system/shutdown", {"password": PASSWORD}), 404, "an unknown action")
    expect(admin.post(API + "/system/reboot/now", {"password": PASSWORD}), 404, "a longer path")
    failed = [e[2] for e in m.audit_entries() if e[2].endswith("-failed")]
    assert failed == ["reboot-failed", "factory-reset-failed"], m.audit_entries()
    time.sleep(0.5)
    assert not helper_runs(runs), "a refused request ran the helper: %s" % helper_runs(runs)

    # the wrong passwords count as failed logins: three more, and a login (even with the
    # right password) or a reboot is throttled
    for i in range(3):
        expect(admin.post(API + "/system/reboot", {"password": "wrong %d" % i}), 403, "wrong password %d" % i)
    r = expect(m.client().login(PASSWORD), 429, "a login after five wrong passwords to /system/*")
    assert r.header("Retry-After"), r.summary()
    expect(admin.post(API + "/system/reboot", good["reboot"]), 429, "a reboot while throttled")
    wait_for(lambda: admin.post(API + "/system/reboot", {"password": "wrong"}).status != 429,
             timeout=10, interval=0.2, msg="the throttling window to end")
    time.sleep(2.5)  # that failure opened a 2 s window
    assert not helper_runs(runs), helper_runs(runs)

    for n, action in enumerate(("reboot", "factory-reset"), 1):
        r = expect(admin.post(API + "/system/" + action, good[action]), 202, action)
        assert r.json() == {"accepted": True}, r.summary()
        assert (r.header("Connection") or "").lower() == "close", r.summary()
        got = _wait_runs(env, runs, n, m, action)
        run = got[n - 1]
        assert run["argv"] == [action], run
        assert run["stdin"] == "/dev/null" and run["stdout"] == "/dev/null", run
        assert int(run["SigBlk"], 16) == 0, "the helper runs with signals blocked: %s" % run
        assert not int(run["SigIgn"], 16) & SIGPIPE_BIT, "the helper inherits SIGPIPE ignored: %s" % run
        assert [e for e in m.audit_entries() if e[2] == action], m.audit_entries()
        wait_for(lambda: "%s %s: done" % (helper, action) in m.log_text(), timeout=10 * env.slow,
                 msg="the log line of the helper's end")
        kids = harness._children_of(m.pid)
        assert not kids, "farmgate-mgmt's children after the helper ended: %s" % kids
    time.sleep(1)
    assert [r["argv"] for r in helper_runs(runs)] == [["reboot"], ["factory-reset"]], helper_runs(runs)
    ok(admin.get(API + "/status"), "the session after the actions")
    m.assert_alive()


def test_system_actions_unavailable_without_helper(env):
    """Without -x: GET /system lists no action and both POSTs are 501 {"error": "not
    available on this system"} even with the right password; -x must name an executable by
    an absolute path, or farmgate-mgmt does not start."""
    fg, m, admin, bes = stack(env)
    assert ok(admin.get(API + "/system"), "system").json()["actions"] == []
    for action, body in (("reboot", {"password": PASSWORD}),
                         ("factory-reset", {"password": PASSWORD, "confirm": "factory-reset"})):
        r = expect(admin.post(API + "/system/" + action, body), 501, action + " without -x")
        assert r.json() == {"error": "not available on this system"}, r.summary()
    assert not [e for e in m.audit_entries() if e[2] in ("reboot", "factory-reset")], m.audit_entries()

    helper, _ = system_helper(env)
    for arg, why in (("farmgate-system", "must be an absolute path"),
                     (env.path("no-such-helper"), "No such file or directory"),
                     (env.write_text("not-executable", "#!/bin/sh\n"), "Permission denied")):
        p = subprocess.run([mgmt_bin(env), "-c", fg.config_path,
                            "-d", env.path("x-data"), "-x", arg],
                           capture_output=True, text=True, timeout=20, cwd=os.path.dirname(helper))
        assert p.returncode == 2 and why in p.stderr, "-x %s: exit %d: %s" % (arg, p.returncode, p.stderr)


def test_system_helper_that_cannot_run_is_logged(env):
    """A helper gone since the start: the request is still 202 (the answer goes first),
    farmgate-mgmt logs why it could not run it, leaves no zombie and keeps serving."""
    helper, runs = system_helper(env)
    fg, m, admin, bes = stack(env, mgmt_args=["-x", helper])
    os.unlink(helper)
    expect(admin.post(API + "/system/reboot", {"password": PASSWORD}), 202, "reboot")
    wait_for(lambda: "%s reboot: cannot run it: No such file or directory" % helper in m.log_text(),
             timeout=10 * env.slow, msg="the log line of the failed exec:\n" + m.log_text()[-2000:])
    time.sleep(0.3)
    assert not harness._children_of(m.pid), harness._children_of(m.pid)
    ok(admin.get(API + "/status"), "status after the failed helper")


def test_system_section_kept_by_config_edits(env):
    """The configuration's system section (farmgated only validates it) survives a farm edit
    through the API, is in GET /config, and a PUT /config with a broken one is 400 naming its
    JSON path, the file unchanged."""
    system = {"hostName": "farmgate", "network": {"interface": "eth0", "mode": "static",
                                                  "address": "192.168.1.10/24", "gateway": "192.168.1.1",
                                                  "dns": ["192.168.1.1", "9.9.9.9"]},
              "ntpServers": ["0.debian.pool.ntp.org", "192.168.1.1"]}

    def with_system(bes):
        cfg = one_farm_config([b.port for b in bes], host=HOST)
        cfg["system"] = system
        return cfg

    fg, m, admin, (a, b) = stack(env, farms_cfg=with_system)
    web = ok(admin.get(API + "/farms/web"), "farm web").json()
    web["servers"] = [server(a.port, weight=7), server(b.port)]
    ok(admin.put(API + "/farms/web", web), "edit farm web")
    assert fg.server_status("web", a.port)["weight"] == 7
    disk = json.loads(read_bytes(fg.config_path))
    assert disk.get("system") == system, "a farm edit lost the system section: %s" % disk.get("system")
    assert ok(admin.get(API + "/config"), "config").json()["system"] == system
    ok(admin.post(API + "/farms", farm("added", [server(a.port)])), "add a farm")
    assert json.loads(read_bytes(fg.config_path)).get("system") == system

    before = read_bytes(fg.config_path)
    bad = json.loads(before)
    bad["system"]["network"]["mode"] = "dhcp"
    r = expect(admin.put(API + "/config", bad), 400, "a system section with an address in dhcp mode")
    assert r.json().get("path") == "$.system.network.address", r.text
    assert "only with mode static" in r.json()["error"], r.text
    assert read_bytes(fg.config_path) == before, "a refused configuration changed the file"
