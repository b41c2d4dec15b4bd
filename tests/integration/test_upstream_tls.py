"""Upstream HTTPS with a client certificate whose key stays on a PKCS#11 token (issue 3):
the source article's ARR-Authentication scenario end to end, RSA and EC keys over TLS 1.2
and 1.3, thumbprint forms, backend certificate verification and pinning, session resumption
and pooling (token signatures counted), PFX import, token removal / device errors through the
fault shim, PIN file policy, and the slow-token isolation proof.

Real peers only: a SoftHSM token per test (keys generated on it by farmgatectl), a test CA
made with the openssl CLI, and Debian's nginx requiring client certificates and mapping
$ssl_client_fingerprint to a user name as IIS one-to-one mapping does (pki.TlsNginx)."""

import copy
import os
import re
import threading
import time

from harness import (curl, free_port, http_request, make_config, RawClient, wait_for)
from pki import (Cert, Pki, SoftToken, TlsNginx, parse_echo, self_signed, sha1_hex, sha256_hex,
                 windows_thumbprint)

FARM = "ARR-Authentication"
IIS = "Client-Cert-Mapping-IIS"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def https_rule(farm_name, host=None):
    """The article's rule: {HTTP_HOST} = host rewritten to https://<farm>/{R:0}."""
    return {"name": "ARR_%s_loadbalance" % farm_name, "patternSyntax": "Wildcard",
            "stopProcessing": True, "match": {"url": "*"},
            "conditions": [{"input": "{HTTP_HOST}", "pattern": host or farm_name}],
            "action": {"type": "Rewrite", "url": "https://%s/{R:0}" % farm_name}}


def https_farm(name, port, thumb=None, ca_file=None, host_name=IIS, pin=None, **protocol):
    srv = {"address": "127.0.0.1", "httpsPort": port}
    if host_name:
        srv["hostName"] = host_name
    if pin:
        srv["certificatePin"] = pin
    proto = {"preserveHostHeader": False}
    if thumb:
        proto["clientCertHash"] = thumb
    if ca_file:
        proto["backendCaFile"] = ca_file
    proto.update(protocol)
    return {"name": name, "servers": [srv], "protocol": proto}


def tls_config(tok, farms, **kw):
    """farms: list of farm dicts; one https rule per farm, Host = farm name."""
    return make_config(farms=farms, rules=[https_rule(f["name"]) for f in farms],
                       tokens=[tok.token_cfg()], **kw)


def get(fg, host, path="/", timeout=15):
    return http_request(fg.port, "GET", path, host=host, timeout=timeout)


def assert_mapped(r, user, what, proto=None):
    assert r.status == 200, "%s: expected 200, got %s" % (what, r.summary())
    e = parse_echo(r.body)
    assert e.get("user") == user, "%s: the backend mapped the client certificate to %r, expected %r (%s)" % (
        what, e.get("user"), user, r.body)
    assert e.get("sni", "").lower() == IIS.lower() and e.get("host", "").lower() == IIS.lower(), \
        "%s: the backend saw SNI %r and Host %r, expected %s for both: %s" % (
            what, e.get("sni"), e.get("host"), IIS, r.body)
    if proto:
        assert e.get("proto") == proto, "%s: negotiated %r, expected %s: %s" % (what, e.get("proto"), proto, r.body)
    return e


def access_for(fg, since, farm_name):
    return [l for l in fg.access_lines(since) if "farm=%s " % farm_name in l]


def reasons(fg, since, farm_name):
    return [l.split("reason=", 1)[1] for l in access_for(fg, since, farm_name) if "reason=" in l]


def exit_stats(fg, token="token1"):
    """Stops farmgated (checked) and returns ({token: signatures}, {farm: signatures}) from
    its exit lines "token <name>: N signatures, ..." and "farm <name>: N token signatures"."""
    mark = fg.log_mark()
    fg.stop()
    text = fg.new_log(mark)
    toks = {m.group(1): int(m.group(2)) for m in re.finditer(r"token (\S+): (\d+) signatures", text)}
    farms = {m.group(1): int(m.group(2)) for m in re.finditer(r"farm (\S+): (\d+) token signatures", text)}
    assert token in toks, "farmgated logged no \"token %s: N signatures\" line at exit:\n%s" % (token, text[-3000:])
    return toks, farms, text


def wait_stats(tok, pid, key, pred, timeout=3.0):
    """Waits until the shim's stats file of pid has pred(value of key); returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        st = tok.stats(pid)
        if key in st and pred(st[key]):
            return st
        if time.monotonic() > deadline:
            raise AssertionError("shim stats of pid %d: %s never satisfied the condition on %s" % (pid, st, key))
        time.sleep(0.05)


def identity(env, key_type="rsa2048", cn="arr-appliance"):
    """CA + token + client certificate (key generated on the token). Returns (ca, tok, cert)."""
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    cert = tok.client_cert(ca, key_type, cn)
    return ca, tok, cert


def iis_backend(env, ca, users, name="iis", **kw):
    crt, key = ca.server_cert(name, ["DNS:" + IIS])
    return TlsNginx(env, crt, key, client_ca=ca.crt, users=users, name=name, **kw).start()


def private_key_files(root, allowed):
    """Files under root whose bytes contain "PRIVATE KEY", other than allowed paths."""
    bad = []
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            if p in allowed or os.path.islink(p):
                continue
            try:
                with open(p, "rb") as f:
                    if b"PRIVATE KEY" in f.read(4 << 20):
                        bad.append(p)
            except OSError:
                continue
    return bad


# --------------------------------------------------------------------------
# 1. the source article
# --------------------------------------------------------------------------

def _strace_farmgated(env, cfg, trace):
    """Starts farmgated under strace -D (the traced farmgated keeps the PID the harness
    signals; the tracer is a detached grandchild) recording every open/openat."""
    assert os.access("/usr/bin/strace", os.X_OK), "strace is missing: apt-get install strace"
    wrapper = env.path("farmgated-strace.sh")
    # LeakSanitizer cannot run under ptrace: ASan's other checks stay on
    asan = "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 " if env.asan else ""
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n%sexec /usr/bin/strace -D -f -e trace=open,openat,openat2 -o %s %s \"$@\"\n"
                % (asan, trace, env.bin))
    os.chmod(wrapper, 0o755)
    senv = copy.copy(env)  # shares cleanups and the farmgated list with env
    senv.bin = wrapper
    return senv.farmgated(cfg, start_timeout=20)


def _trace_opens(trace, pid, timeout):
    """Waits until strace recorded pid's exit; returns every path it opened (attempts too)."""
    deadline = time.monotonic() + timeout
    rx = re.compile(r"^%d\s+\+\+\+ (exited|killed)" % pid, re.M)
    while True:
        try:
            with open(trace) as f:
                text = f.read()
        except OSError:
            text = ""
        if rx.search(text):
            break
        assert time.monotonic() < deadline, "strace did not record the exit of farmgated %d within %ss" % (
            pid, timeout)
        time.sleep(0.1)
    return re.findall(r'\bopen(?:at2?)?\((?:[A-Z_]+|\d+, )?,?\s*"([^"]*)"', text), text


def test_arr_authentication_scenario(env):
    ca, tok, cert = identity(env, "rsa2048", "arr-appliance")
    ng = iis_backend(env, ca, {cert.sha1: "arr-appliance"})
    thumb = windows_thumbprint(cert.sha1)  # "0f 93 1f ...", as Windows shows it
    cfg = make_config(
        farms=[https_farm(FARM, ng.port, thumb, ca.crt)],
        rules=[https_rule(FARM, "ARR-Authentication")],
        tokens=[tok.token_cfg()])
    trace = env.path("farmgated.strace")
    fg = _strace_farmgated(env, cfg, trace)

    p = curl(["-H", "Host: ARR-Authentication", "-w", "\nstatus=%{http_code}",
              fg.url("/orders/42?x=1")], timeout=20)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0 and out.endswith("status=200"), \
        "curl through farmgated: exit %d, %r %r\n%s" % (p.returncode, out, p.stderr, env.log_tails())
    e = parse_echo(out)
    assert e.get("user") == "arr-appliance", \
        "the backend did not map the appliance certificate to its user: %r\n%s" % (out, ng.error_log()[-1500:])
    assert e.get("sni") and e["sni"].lower() == IIS.lower(), "SNI seen by the backend: %r (want %s)" % (
        e.get("sni"), IIS)
    assert e.get("host", "").lower() == IIS.lower(), "Host seen by the backend: %r (want %s)" % (e.get("host"), IIS)
    assert e.get("rawhost", "").split(":")[0].lower() == IIS.lower(), \
        "Host header sent to the backend: %r (preserveHostHeader false: the hostName)" % e.get("rawhost")
    assert e.get("uri") == "/orders/42?x=1", "{R:0} and the query string: backend saw %r" % e.get("uri")
    # both ends can do TLS 1.3 and SoftHSM makes RSA-PSS signatures
    assert e.get("proto") == "TLSv1.3", "negotiated %r with a TLS 1.2/1.3 backend and an RSA token key" % (
        e.get("proto"),)
    assert "cannot make RSA-PSS" not in fg.log_text(), fg.log_text()[-2000:]

    # the key was generated on the token, sensitive and never extractable
    access, listing = tok.private_key_access(key_id=cert.key_id)
    assert "sensitive" in access and "extractable" not in access, \
        "the token key must be CKA_SENSITIVE and not CKA_EXTRACTABLE:\n" + listing
    assert "never extractable" in access and "always sensitive" in access and "local" in access, \
        "a key generated on the token is always sensitive, never extractable, local:\n" + listing

    pid = fg.pid
    toks, farms, _ = exit_stats(fg)
    assert toks["token1"] >= 1 and farms.get(FARM, 0) >= 1, \
        "the handshake's signature must have been made on the token: %s %s" % (toks, farms)

    opened, text = _trace_opens(trace, pid, 15 * env.slow)
    assert fg.config_path in opened and tok.pin_file in opened, \
        "the trace does not show farmgated opening its config and PIN file (strace broken?):\n%s" % text[-3000:]
    assert any(p.startswith(tok.dir) and p.endswith(".object") for p in opened), \
        "the trace does not show SoftHSM opening its token objects:\n" + "\n".join(opened)
    allowed = {fg.config_path, ca.crt}
    keyish = [p for p in opened if p.endswith((".key", ".pem", ".p12", ".pfx")) and p not in allowed]
    assert not keyish, "farmgated opened key-like files: %s" % keyish
    software_keys = {ca.key, ng.key}
    assert not software_keys & set(opened), "farmgated opened a software key: %s" % (software_keys & set(opened))
    stray = private_key_files(env.tmp, software_keys)
    assert not stray, "files holding a PRIVATE KEY besides the CA's and nginx's: %s" % stray


# --------------------------------------------------------------------------
# 2. EC key, TLS 1.2 and TLS 1.3
# --------------------------------------------------------------------------

def test_ec_key_tls12_and_tls13(env):
    ca, tok, cert = identity(env, "ec256", "ec-appliance")
    users = {cert.sha1: "ec-appliance"}
    ng12 = iis_backend(env, ca, users, name="tls12", protocols="TLSv1.2")
    ng13 = iis_backend(env, ca, users, name="tls13", protocols="TLSv1.3")
    fg = env.farmgated(tls_config(tok, [https_farm("tls12", ng12.port, cert.sha1, ca.crt),
                                        https_farm("tls13", ng13.port, cert.sha1, ca.crt)]))
    for farm_name, proto in (("tls12", "TLSv1.2"), ("tls13", "TLSv1.3")):
        r = get(fg, farm_name, "/ec")
        assert_mapped(r, "ec-appliance", "P-256 token key, backend %s only" % proto, proto=proto)
    toks, farms, _ = exit_stats(fg)
    assert farms.get("tls12", 0) >= 1 and farms.get("tls13", 0) >= 1, \
        "each farm's handshake needs a token signature: %s" % farms


def test_token_without_pss_caps_farm_at_tls12(env):
    """A token without raw RSA (so no RSA-PSS: TLS 1.3 impossible with its RSA key) caps the
    farm at TLS 1.2 with a logged notice, and signs TLS 1.2 with PKCS#1 v1.5: the shim refuses
    CKM_RSA_X_509 in C_SignInit, so any PSS attempt would fail the handshake."""
    ca, tok, cert = identity(env, "rsa2048", "no-pss-appliance")
    tok.use_shim()
    tok.set_control("hide_mechanisms=CKM_RSA_X_509,CKM_RSA_PKCS_PSS\n")
    users = {cert.sha1: "no-pss-appliance"}
    ng = iis_backend(env, ca, users, name="any")  # offers TLS 1.2 and 1.3
    fg = env.farmgated(tls_config(tok, [https_farm("nopss", ng.port, cert.sha1, ca.crt)]))
    fg.wait_log(r"farm nopss: token \S+ cannot make RSA-PSS signatures: TLS 1.2 only", timeout=5)
    for i in range(2):
        assert_mapped(get(fg, "nopss", "/pkcs1-%d" % i), "no-pss-appliance",
                      "RSA key on a token without PSS", proto="TLSv1.2")
    toks, farms, _ = exit_stats(fg)
    assert farms.get("nopss", 0) >= 1, "the handshake must have been signed on the token: %s" % farms


# --------------------------------------------------------------------------
# 3. thumbprint forms
# --------------------------------------------------------------------------

def test_sha256_thumbprint_accepted(env):
    ca, tok, cert = identity(env, "rsa2048", "sha256-appliance")
    ng = iis_backend(env, ca, {cert.sha1: "sha256-appliance"})
    colons = ":".join(cert.sha256[i:i + 2] for i in range(0, 64, 2))  # AB:CD:... upper case
    spaced = windows_thumbprint(cert.sha256)                          # ab cd ... lower case
    fg = env.farmgated(tls_config(tok, [https_farm("colons", ng.port, colons, ca.crt),
                                        https_farm("spaced", ng.port, spaced, ca.crt)]))
    for farm_name in ("colons", "spaced"):
        assert_mapped(get(fg, farm_name, "/x"), "sha256-appliance", "SHA-256 thumbprint (%s)" % farm_name)


def _check_config(env, cfg, name):
    cfg = dict(cfg)
    cfg["listeners"] = [{"address": "127.0.0.1", "port": free_port()}]
    path = env.write_json(name + ".json", cfg)
    return env.cli("-t", "-c", path, timeout=30)


def test_wrong_thumbprint_is_config_error(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    other = Pki(env, "other")  # a certificate that is not on the token
    good = tls_config(tok, [https_farm(FARM, 443, windows_thumbprint(cert.sha1), ca.crt)])
    p = _check_config(env, good, "good")
    assert p.returncode == 0, "the right thumbprint must pass farmgated -t (exit %d):\n%s" % (p.returncode, p.output)

    cases = [
        ("not on the token (SHA-1)", sha1_hex(other.crt)),
        ("not on the token (SHA-256)", sha256_hex(other.crt)),
        ("the CA's, not the appliance's", windows_thumbprint(sha1_hex(ca.crt))),
        ("39 hex digits", cert.sha1[:-1]),
        ("41 hex digits", cert.sha1 + "0"),
        ("not hex", "zz" + cert.sha1[2:]),
        ("SHA-1 and a stray byte", windows_thumbprint(cert.sha1) + " 0"),
    ]
    for i, (what, thumb) in enumerate(cases):
        cfg = copy.deepcopy(good)
        cfg["webFarms"][0]["protocol"]["clientCertHash"] = thumb
        p = _check_config(env, cfg, "bad%d" % i)
        assert p.returncode == 1, "clientCertHash %s (%r): farmgated -t must exit 1, got %d:\n%s" % (
            what, thumb, p.returncode, p.output)
        assert "$.webFarms[0].protocol.clientCertHash:" in p.output, \
            "clientCertHash %s (%r): the error must name $.webFarms[0].protocol.clientCertHash:\n%s" % (
                what, thumb, p.output)


# --------------------------------------------------------------------------
# 4. backend certificate verification and pinning
# --------------------------------------------------------------------------

def test_backend_certificate_verified(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    users = {cert.sha1: "appliance"}
    other_ca = Pki(env, "otherca")
    good = iis_backend(env, ca, users, name="good")
    crt, key = other_ca.server_cert("foreign", ["DNS:" + IIS])
    foreign = TlsNginx(env, crt, key, client_ca=ca.crt, users=users, name="foreign").start()
    crt, key = ca.server_cert("misnamed", ["DNS:some-other-host.example", "DNS:client-cert-mapping-iis.example"])
    misnamed = TlsNginx(env, crt, key, client_ca=ca.crt, users=users, name="misnamed").start()
    ss_crt, ss_key = self_signed(env, "selfsigned", ["DNS:self-signed.local"])
    pinned = TlsNginx(env, ss_crt, ss_key, client_ca=ca.crt, users=users, name="pinned").start()
    badpin = TlsNginx(env, ss_crt, ss_key, client_ca=ca.crt, users=users, name="badpin").start()
    pin = sha256_hex(ss_crt)
    wrong_pin = sha256_hex(ca.crt)
    farms = [https_farm("good", good.port, cert.sha1, ca.crt),
             https_farm("foreign", foreign.port, cert.sha1, ca.crt),
             https_farm("misnamed", misnamed.port, cert.sha1, ca.crt),
             https_farm("pinned", pinned.port, cert.sha1, ca.crt, pin=pin),
             https_farm("badpin", badpin.port, cert.sha1, ca.crt, pin=wrong_pin),
             https_farm("selfsigned", badpin.port, cert.sha1, ca.crt)]
    fg = env.farmgated(tls_config(tok, farms))
    mark = fg.log_mark()

    assert_mapped(get(fg, "good"), "appliance", "backend certificate from the configured CA")
    assert_mapped(get(fg, "pinned"), "appliance", "self-signed backend certificate with its SHA-256 pin")
    for farm_name, what in (("foreign", "a backend certificate from another CA"),
                            ("misnamed", "a backend certificate without the hostName in its SAN"),
                            ("badpin", "a backend certificate that does not match certificatePin"),
                            ("selfsigned", "a self-signed backend certificate without a pin")):
        r = get(fg, farm_name)
        assert r.status == 502, "%s must give 502, got %s" % (what, r.summary())
        rs = wait_for(lambda: reasons(fg, mark, farm_name), timeout=5, msg="an access line for farm " + farm_name)
        assert any("backend certificate" in x for x in rs), \
            "%s: the access log reason must say \"backend certificate\": %s" % (what, rs)
    assert not [l for l in foreign.access_lines() + misnamed.access_lines() if '"GET' in l], \
        "a backend whose certificate was rejected must never get the request"
    assert not [l for l in badpin.access_lines() if '"GET' in l], \
        "a backend whose certificate was rejected must never get the request: %s" % badpin.access_lines()
    # the warnings about a failed server must name the port that was tried (the https one)
    wrong_port = [l for l in fg.log_text().splitlines()
                  if re.search(r"farm=(foreign|misnamed|badpin|selfsigned) server=127\.0\.0\.1:(?!(%d|%d|%d)\b)"
                               % (foreign.port, misnamed.port, badpin.port), l)]
    assert not wrong_port, "log lines name a server port other than its httpsPort:\n" + "\n".join(wrong_port)


# --------------------------------------------------------------------------
# 5. resumption and pooling: a warm farm makes no token signatures
# --------------------------------------------------------------------------

def test_resumption_and_pooling_few_signatures(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    tok.use_shim()  # only to count the signatures the module really made
    users = {cert.sha1: "appliance"}

    # (a) every request on a new TLS connection (keepalive_timeout 0), sessions allowed
    ng = iis_backend(env, ca, users, name="nokeepalive", keepalive_timeout="0")
    fg = env.farmgated(tls_config(tok, [https_farm(FARM, ng.port, cert.sha1, ca.crt)]))
    conns, reused = set(), 0
    for i in range(30):
        e = assert_mapped(get(fg, FARM, "/r%d" % i), "appliance", "request %d to a backend without keep-alive" % i)
        conns.add(e.get("conn"))
        reused += e.get("reused") == "r"
    assert len(conns) == 30, "keepalive_timeout 0: 30 requests must use 30 backend connections, saw %d" % len(conns)
    assert reused >= 28, "only %d of 30 TLS connections resumed a session" % reused
    pid = fg.pid
    toks, farms, _ = exit_stats(fg)
    n = toks["token1"]
    assert 1 <= n <= 2, "30 requests over 30 resumable TLS connections cost %d token signatures (want <= 2)" % n
    assert farms.get(FARM) == n, "farm %s counted %s signatures, the token %d" % (FARM, farms.get(FARM), n)
    real = tok.settled_stats(pid).get("signatures")
    assert real == n, "the module made %s signatures, farmgated reported %d" % (real, n)

    # (b) keep-alive backend: after warm-up, zero signatures per request
    ng2 = iis_backend(env, ca, users, name="keepalive")
    fg = env.farmgated(tls_config(tok, [https_farm(FARM, ng2.port, cert.sha1, ca.crt)]))
    pid = fg.pid
    e = assert_mapped(get(fg, FARM, "/warm"), "appliance", "warm-up request")
    warm = wait_stats(tok, pid, "signatures", lambda v: v >= 1)["signatures"]
    conns = {e.get("conn")}
    with RawClient(fg.port, timeout=15) as c:
        for i in range(200):
            c.request("GET", "/k%d" % i, host=FARM)
            r = c.read_response()
            e = assert_mapped(r, "appliance", "keep-alive request %d" % i)
            conns.add(e.get("conn"))
    after = tok.settled_stats(pid)["signatures"]
    assert after == warm, "200 warm requests made %d token signatures (want 0)" % (after - warm)
    assert len(conns) == 1, "200 sequential requests used %d backend connections, not one pooled: %s" % (
        len(conns), sorted(conns))
    toks, farms, _ = exit_stats(fg)
    assert toks["token1"] == 1 and farms.get(FARM) == 1, \
        "one handshake, then pooled: expected 1 signature in all, farmgated says %s %s" % (toks, farms)


# --------------------------------------------------------------------------
# 6. PFX import (ARR's clientCertFileName/clientCertPassword), then use
# --------------------------------------------------------------------------

def test_pfx_import_then_use(env):
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    crt, key = ca.software_client("pfx-appliance", "pfx-appliance")
    pfx = ca.path("appliance.pfx")
    ca.openssl("pkcs12", "-export", "-inkey", key, "-in", crt, "-out", pfx, "-passout", "pass:Pfx-Secret-1")
    cert = Cert(crt)
    out = tok.ctl("import-pfx", pfx, "--password-env", "FG_PFX_PASSWORD", "--label", "pfx-appliance",
                  extra_env={"FG_PFX_PASSWORD": "Pfx-Secret-1"})
    assert cert.sha1 in out.upper().replace(":", ""), "import-pfx must print the certificate's SHA-1 %s:\n%s" % (
        cert.sha1, out)
    os.unlink(pfx)
    os.unlink(key)
    stray = private_key_files(env.tmp, {ca.key})
    assert not stray, "a copy of a private key was left on disk after the import: %s" % stray
    access, listing = tok.private_key_access(label="pfx-appliance")
    assert "sensitive" in access and "extractable" not in access, \
        "the imported key must be CKA_SENSITIVE and not CKA_EXTRACTABLE:\n" + listing

    ng = iis_backend(env, ca, {cert.sha1: "pfx-user"})
    fg = env.farmgated(tls_config(tok, [https_farm(FARM, ng.port, windows_thumbprint(cert.sha1), ca.crt)]))
    assert_mapped(get(fg, FARM, "/pfx"), "pfx-user", "certificate imported from a PFX")
    toks, farms, _ = exit_stats(fg)
    assert farms.get(FARM, 0) >= 1, "the imported key signed on the token: %s" % farms


def test_pfx_named_in_config_is_imported_onto_token(env):
    """ARR's clientCertFileName + clientCertPassword: farmgated imports the PFX onto the token
    (non-extractable), says the file still holds the key, and signs on the token; a wrong
    password is a configuration error naming clientCertPassword."""
    ca = Pki(env, "ca")
    tok = SoftToken(env)
    crt, key = ca.software_client("cfg-pfx-appliance", "cfg-pfx-appliance")
    pfx = ca.path("arr.pfx")
    ca.openssl("pkcs12", "-export", "-inkey", key, "-in", crt, "-out", pfx, "-passout", "pass:Arr-Pfx-2")
    os.unlink(key)
    cert = Cert(crt)
    ng = iis_backend(env, ca, {cert.sha1: "pfx-config-user"})
    good = tls_config(tok, [https_farm(FARM, ng.port, None, ca.crt, clientCertFileName=pfx,
                                       clientCertPassword="Arr-Pfx-2")])
    bad = copy.deepcopy(good)
    bad["webFarms"][0]["protocol"]["clientCertPassword"] = "not-the-password"
    p = _check_config(env, bad, "badpw")
    assert p.returncode == 1 and "$.webFarms[0].protocol.clientCertPassword:" in p.output, \
        "a wrong PFX password must fail farmgated -t naming clientCertPassword (exit %d):\n%s" % (
            p.returncode, p.output)

    fg = env.farmgated(good)
    fg.wait_log(r"imported the key and certificate of .* onto token .*delete it", timeout=5)
    assert_mapped(get(fg, FARM, "/cfg-pfx"), "pfx-config-user", "certificate imported from clientCertFileName")
    access, listing = tok.private_key_access(label="farmgate-pfx")
    assert "sensitive" in access and "extractable" not in access, \
        "the key imported from the PFX must be CKA_SENSITIVE and not CKA_EXTRACTABLE:\n" + listing
    toks, farms, _ = exit_stats(fg)
    assert farms.get(FARM, 0) >= 1, "the imported key signed on the token: %s" % farms
    # a second start finds it on the token and does not import it twice
    fg2 = env.farmgated(good)
    fg2.wait_log(r"is already on token", timeout=5)
    assert_mapped(get(fg2, FARM, "/again"), "pfx-config-user", "second start, PFX already imported")


# --------------------------------------------------------------------------
# 7. token removal and return, device errors (fault shim)
# --------------------------------------------------------------------------

def _wait_status(fg, host, want, timeout, what):
    """Polls with requests until one gets status want; returns (response, seconds)."""
    t0 = time.monotonic()
    last = None
    while True:
        last = get(fg, host, "/poll", timeout=10)
        if last.status == want:
            return last, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("%s: no %d within %.1fs; last response %s\n%s" % (
                what, want, timeout, last.summary(), fg.log_text()[-2500:]))
        time.sleep(0.1)


def _upstream_conns(pid, port):
    """Established TCP connections of process pid to 127.0.0.1:port (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            rem, state, inode = parts[2], parts[3], parts[9]
            if state == "01" and inode in inodes and int(rem.split(":")[1], 16) == port:
                n += 1
    return n


def test_token_removal_and_return(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    tok.use_shim()
    users = {cert.sha1: "appliance"}
    pooled = iis_backend(env, ca, users, name="pooled")  # keep-alive + sessions
    fresh = iis_backend(env, ca, users, name="fresh", session_cache=False, tickets=False, keepalive_timeout="0")
    fg = env.farmgated(tls_config(tok, [https_farm("pooled", pooled.port, cert.sha1, ca.crt),
                                        https_farm("fresh", fresh.port, cert.sha1, ca.crt)]))
    pid = fg.pid
    old_conns = set()
    for i in range(3):
        old_conns.add(assert_mapped(get(fg, "pooled"), "appliance", "pooled farm before the removal")["conn"])
        e = assert_mapped(get(fg, "fresh"), "appliance", "fresh farm before the removal")
        assert e.get("reused") == ".", "the 'fresh' backend must force full handshakes: %s" % e
    base = tok.settled_stats(pid)
    assert base.get("login_calls") == 1, "one login at start expected, the shim counted %s" % base
    assert _upstream_conns(pid, pooled.port) >= 1, "farmgated keeps no pooled connection to the keep-alive backend"

    # --- removal: within 3 s every request is 502, pooled connections included
    mark = fg.log_mark()
    tok.set_control("removed=1\n")
    t0 = time.monotonic()
    _wait_status(fg, "pooled", 502, 3.0 * env.slow, "pooled farm after the token was removed")
    wait_for(lambda: _upstream_conns(pid, pooled.port) == 0, timeout=1.0 * env.slow,
             msg="farmgated to close its pooled TLS connections of the farm whose token is gone")
    for i in range(5):
        for farm_name in ("pooled", "fresh"):
            r = get(fg, farm_name)
            assert r.status == 502, "farm %s, token removed (%.1fs ago): got %s" % (
                farm_name, time.monotonic() - t0, r.summary())
    for farm_name in ("pooled", "fresh"):
        rs = reasons(fg, mark, farm_name)
        assert rs and all(x == "client identity unavailable" for x in rs[-5:]), \
            "farm %s: 502s while the token is out must say \"client identity unavailable\": %s" % (farm_name, rs)

    # --- return: within 5 s requests work again, one new login
    mark = fg.log_mark()
    tok.set_control("removed=0\n")
    r, dt_back = _wait_status(fg, "pooled", 200, 5.0 * env.slow, "pooled farm after the token came back")
    e = assert_mapped(r, "appliance", "pooled farm after the return")
    assert e["conn"] not in old_conns and e["reused"] == ".", \
        "after the token came back the pooled farm must use a new connection and a new session (full " \
        "handshake), not one made before the removal: backend connection %s (before: %s), reused=%s" % (
            e["conn"], sorted(old_conns), e["reused"])
    assert_mapped(get(fg, "fresh"), "appliance", "fresh farm after the return")
    fg.wait_log(r"token token1 is back", timeout=2, since=mark)
    time.sleep(1.5)  # a second probe would show a stray login
    st = tok.settled_stats(pid)
    assert st.get("login_calls") == base["login_calls"] + 1, \
        "the recovery must log in exactly once: login_calls %d before, %s after" % (base["login_calls"], st)
    assert st.get("signatures", 0) > base.get("signatures", 0), \
        "after the return new handshakes must be signed on the re-opened token: %s -> %s" % (base, st)

    # --- device error on signing, backend forcing full handshakes: 502, then recovery
    for i in range(3):
        assert_mapped(get(fg, "fresh"), "appliance", "fresh farm before the device error")
    mark = fg.log_mark()
    tok.set_control("fail=CKR_DEVICE_ERROR\nfail_calls=C_Sign,C_SignInit\n")
    r = get(fg, "fresh")
    assert r.status == 502, "a signature failing with CKR_DEVICE_ERROR must give 502: %s" % r.summary()
    for i in range(3):
        r = get(fg, "fresh")
        assert r.status == 502, "while C_Sign fails with CKR_DEVICE_ERROR: %s" % r.summary()
    rs = reasons(fg, mark, "fresh")
    assert rs and all(x == "client identity unavailable" for x in rs), \
        "502s from a token device error must say \"client identity unavailable\": %s" % rs
    tok.set_control("")
    r, dt_dev = _wait_status(fg, "fresh", 200, 5.0 * env.slow, "fresh farm after the device error cleared")
    assert_mapped(r, "appliance", "fresh farm after the device error")
    assert_mapped(get(fg, "pooled"), "appliance", "pooled farm after the device error")
    fg.assert_alive()


# --------------------------------------------------------------------------
# 8. PIN file policy, wrong PIN never retried
# --------------------------------------------------------------------------

def test_pin_file_permissions_refused(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    tok.use_shim()
    farms = [https_farm(FARM, 443, cert.sha1, ca.crt)]

    def check(pin_file, name):
        cfg = make_config(farms=farms, rules=[https_rule(FARM)], tokens=[tok.token_cfg(pin_file=pin_file)])
        return _check_config(env, cfg, name)

    p = check(tok.pin_file, "ok")
    assert p.returncode == 0, "a root-owned 0600 PIN file must be accepted (exit %d):\n%s" % (p.returncode, p.output)

    for mode in (0o644, 0o640, 0o604):
        loose = tok.write_pin("1234", "loose-%o.pin" % mode, mode=mode)
        p = check(loose, "loose%o" % mode)
        assert p.returncode == 1, "PIN file mode %04o: farmgated -t must exit 1, got %d:\n%s" % (
            mode, p.returncode, p.output)
        assert "$.tokens[0].pinFile:" in p.output, \
            "PIN file mode %04o: the error must name $.tokens[0].pinFile:\n%s" % (mode, p.output)
    foreign = tok.write_pin("1234", "foreign.pin")
    os.chown(foreign, 65534, 65534)
    p = check(foreign, "foreign")
    assert p.returncode == 1 and "$.tokens[0].pinFile:" in p.output, \
        "a PIN file not owned by root must be refused naming $.tokens[0].pinFile (exit %d):\n%s" % (
            p.returncode, p.output)
    os.symlink(tok.pin_file, tok.path("link.pin"))
    p = check(tok.path("link.pin"), "symlink")
    assert p.returncode == 1 and "$.tokens[0].pinFile:" in p.output, \
        "a PIN file that is a symbolic link must be refused naming $.tokens[0].pinFile (exit %d):\n%s" % (
            p.returncode, p.output)

    # a wrong PIN: refused with a clear message, one attempt only
    for f in os.listdir(tok.dir):
        if f.startswith("shim.stats."):
            os.unlink(tok.path(f))
    assert tok.pin_failures() == 0
    wrong = tok.write_pin("9999", "wrong.pin")
    p = check(wrong, "wrongpin")
    assert p.returncode == 1, "a wrong PIN must make farmgated -t exit 1, got %d:\n%s" % (p.returncode, p.output)
    assert "wrong PIN" in p.output, "the error must say \"wrong PIN\":\n" + p.output
    assert tok.pin_failures() == 1, \
        "the token counted %d failed PIN attempts; farmgated must try a wrong PIN exactly once" % tok.pin_failures()
    stats = [f for f in os.listdir(tok.dir) if f.startswith("shim.stats.") and ".tmp" not in f]
    assert len(stats) == 1, "one farmgated process used the shim, stats files: %s" % stats
    st = tok.stats(stats[0].rsplit(".", 1)[1])
    assert st.get("login_calls") == 1, "farmgated -t with a wrong PIN: the shim counted %s (want 1 login)" % st
    assert "count low" in p.output.lower(), \
        "after a failed try the token reports CKF_USER_PIN_COUNT_LOW; the error must report it:\n" + p.output

    # the PIN flags the token reports are passed on, and each run is still a single try
    p = check(wrong, "wrongpin2")
    assert p.returncode == 1 and tok.pin_failures() == 2, (p.returncode, tok.pin_failures(), p.output)
    assert "final" in p.output.lower(), "one try left: the error must say so:\n" + p.output
    p = check(wrong, "wrongpin3")
    assert p.returncode == 1 and tok.pin_failures() == 3, (p.returncode, tok.pin_failures(), p.output)
    p = check(tok.pin_file, "locked")
    assert p.returncode == 1 and "locked" in p.output.lower(), \
        "a locked token must be reported as locked, even with the right PIN:\n" + p.output


# --------------------------------------------------------------------------
# 9. a slow token does not stall the event loop (the isolation proof)
# --------------------------------------------------------------------------

def _percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def test_slow_token_does_not_stall_the_loop(env):
    ca, tok, cert = identity(env, "ec256", "appliance")
    tok.use_shim()
    users = {cert.sha1: "appliance"}
    # farm A: every request is a new TLS connection with a full handshake (no resumption)
    slow_be = iis_backend(env, ca, users, name="handshakes", session_cache=False, tickets=False,
                          keepalive_timeout="0")
    # farm B: a pooled, warm connection (same token: it needs no signature once warm)
    warm_be = iis_backend(env, ca, users, name="warm")
    fg = env.farmgated(tls_config(tok, [https_farm("farm-a", slow_be.port, cert.sha1, ca.crt),
                                        https_farm("farm-b", warm_be.port, cert.sha1, ca.crt)]))
    pid = fg.pid
    b = RawClient(fg.port, timeout=15)
    env.on_cleanup(b.close)
    for i in range(20):  # warm farm B's pooled connection
        b.request("GET", "/warm", host="farm-b")
        assert_mapped(b.read_response(), "appliance", "farm B warm-up")
    tok.set_control("sign_delay_ms=200\n")
    sig0 = tok.settled_stats(pid).get("signatures", 0)

    duration = 5.0
    stop_at = time.monotonic() + duration
    a_results, a_errors = [], []
    lock = threading.Lock()

    def hammer():
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = get(fg, "farm-a", "/slow", timeout=20)
            except Exception as e:  # noqa: recorded and asserted below
                with lock:
                    a_errors.append(repr(e))
                continue
            with lock:
                a_results.append((r.status, time.monotonic() - t0, r.body))

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let farm A's handshakes queue up on the token
    b_lat = []
    b_bad = []
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        b.request("GET", "/fast", host="farm-b")
        r = b.read_response(timeout=10)
        b_lat.append(time.monotonic() - t0)
        if r.status != 200 or parse_echo(r.body).get("user") != "appliance":
            b_bad.append(r.summary())
        time.sleep(0.002)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "farm A clients still running 30 s after the end"

    assert not b_bad, "farm B requests failed during the load: %s" % b_bad[:3]
    assert len(b_lat) >= 200, "only %d farm B requests in %.1fs" % (len(b_lat), duration - 0.5)
    p99 = _percentile(b_lat, 99)
    assert p99 < 0.020, \
        "farm B (pooled, no signatures) p99 %.1f ms while farm A waits on a 200 ms token (max %.1f ms, %d requests)" % (
            p99 * 1000, max(b_lat) * 1000, len(b_lat))

    ok = [(dt, body) for st, dt, body in a_results if st == 200]
    assert not a_errors, "farm A client errors: %s" % a_errors[:3]
    assert len(ok) >= 5, "farm A: only %d of %d requests succeeded: %s" % (
        len(ok), len(a_results), sorted({st for st, _, _ in a_results}))
    assert all(st == 200 for st, _, _ in a_results), \
        "farm A requests failed under load: %s" % sorted({st for st, _, _ in a_results})
    fastest = min(dt for dt, _ in ok)
    assert fastest >= 0.2, "a farm A request took %.0f ms: its handshake cannot have waited for the 200 ms token" % (
        fastest * 1000)
    assert all(parse_echo(body).get("reused") == "." for _, body in ok), "farm A's backend must force full handshakes"
    made = tok.settled_stats(pid).get("signatures", 0) - sig0
    assert made >= len(ok), "%d farm A handshakes but only %d token signatures" % (len(ok), made)
    lat_a = sorted(dt for dt, _ in ok)
    print("farm A: %d ok, median %.0f ms; farm B: %d requests, p99 %.2f ms" % (
        len(ok), _percentile(lat_a, 50) * 1000, len(b_lat), p99 * 1000))
