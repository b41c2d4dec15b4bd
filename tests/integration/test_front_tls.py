"""HTTPS listeners (front-end TLS) and client certificates (docs/config-format.md, "HTTPS
listeners (front-end TLS) and client certificates").

Real clients only: curl (also with libp11's pkcs11 engine, the key of the client certificate
made on a SoftHSM token of its own: the badge stand-in) and `openssl s_client`; a test CA,
CRLs and back-dated certificates made with the openssl CLI (pki.Pki); backends are Debian's
nginx echoing the relayed headers and harness.RecordingBackend (exact bytes).

The client side of every check was first run against nginx or openssl s_server (the badge's
stays in the suite: test_badge_curl_against_nginx), so a failure here is farmgated's."""

import base64
import os
import re
import socket
import ssl
import subprocess
import time

import harness
from harness import CURL, http_request, make_config, parse_responses
from pki import (OPENSSL, Pki, SoftToken, TlsNginx, client_env, parse_echo, pem_der, run,
                 s_client)

HOST = "fg.test"              # the name clients use (resolved to 127.0.0.1 by curl --resolve)
SPOOF_B64 = base64.b64encode(b"forged certificate").decode()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

class CurlResult:
    def __init__(self, cmd, p):
        self.cmd = cmd
        self.rc = p.returncode
        self.stdout = p.stdout
        self.stderr = p.stderr.decode("utf-8", "replace")
        rs = parse_responses(p.stdout)
        self.response = rs[-1] if rs else None
        self.status = self.response.status if self.response else None

    @property
    def text(self):
        return self.response.text if self.response else ""

    def header(self, name):
        return self.response.header(name) if self.response else None

    def summary(self):
        return "curl exit %d, %s; stderr %r; cmd: %s" % (
            self.rc, self.response.summary() if self.response else "no response", self.stderr[-600:],
            " ".join(self.cmd))


def tls_curl(port, path="/", ca=None, cert=None, key=None, badge=None, args=(), name=HOST,
             timeout=30, env=None):
    """curl -i https://<name>:<port><path> (name resolved to 127.0.0.1) trusting ca.
    cert/key: a software client certificate; badge: (SoftToken, Cert) whose key is used on the
    token through the pkcs11 engine."""
    cmd = [CURL, "-sS", "-i", "--noproxy", "*", "--max-time", str(timeout),
           "--resolve", "%s:%d:127.0.0.1" % (name, port)]
    if ca:
        cmd += ["--cacert", ca]
    e = env
    if badge:
        tok, bcert = badge
        cmd += ["--engine", "pkcs11", "--key-type", "ENG", "--key", tok.key_uri(bcert.label),
                "--cert", bcert.path]
        e = tok.client_env()
    elif cert:
        cmd += ["--cert", cert] + (["--key", key] if key else [])
    cmd += [str(a) for a in args] + ["https://%s:%d%s" % (name, port, path)]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env=e or client_env())
    except subprocess.TimeoutExpired:
        raise AssertionError("curl did not finish within %ss: %s" % (timeout + 10, " ".join(cmd)))
    return CurlResult(cmd, p)


def peer_der(out):
    """DER of the server certificate s_client printed."""
    m = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", out, re.S)
    assert m, "s_client printed no server certificate:\n" + out[-3000:]
    return base64.b64decode("".join(m.group(1).split()))


def assert_refused(r, what):
    """The connection got no HTTP response (refused during or right after the handshake)."""
    assert r.status is None and r.rc != 0, "%s: the client must be refused: %s" % (what, r.summary())


def get_request(host=HOST, path="/"):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()


def file_cert(crt, key):
    os.chmod(key, 0o600)
    return {"certificateFile": crt, "keyFile": key}


def tls_listener(certs, **opts):
    """A 127.0.0.1 listener (port chosen at start) with ssl = {certificates, **opts}."""
    d = {"certificates": list(certs)}
    d.update(opts)
    return {"address": "127.0.0.1", "port": None, "ssl": d}


def plain_listener():
    return {"address": "127.0.0.1", "port": None}


def route_all(farm_name, name="all"):
    return {"name": name, "patternSyntax": "Wildcard", "stopProcessing": True,
            "match": {"url": "*"}, "action": {"type": "Rewrite", "url": "http://%s/{R:0}" % farm_name}}


def one_farm(port, name="web", **protocol):
    f = {"name": name, "servers": [{"address": "127.0.0.1", "httpPort": port}]}
    if protocol:
        f["protocol"] = protocol
    return f


def der_b64(path):
    return base64.b64encode(pem_der(path)).decode()


RELAYED = ("X-ARR-ClientCert", "X-ARR-SSL", "Client-Cert", "Client-Cert-Chain")


def echo_nginx(env, name="echo"):
    """nginx (plain HTTP) answering with the relayed headers, one per line."""
    body = ('location / {\n default_type text/plain;\n'
            ' return 200 "cc=$http_x_arr_clientcert\\nssl=$http_x_arr_ssl\\n'
            'xfp=$http_x_forwarded_proto\\nrfc=$http_client_cert\\nchain=$http_client_cert_chain\\n'
            'uri=$request_uri\\n";\n}\n')
    return env.nginx("custom", name=name, server_body=body)


def echo_fields(text):
    return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)


def badge(env, ca, cn="alice", key_type="ec256", label="badge"):
    """A separate SoftHSM token (not farmgated's: export=False) with a key generated on it
    and a client certificate for it from ca. Returns (tok, cert)."""
    tok = SoftToken(env, label=label, export=False)
    cert = tok.client_cert(ca, key_type, cn)
    access, listing = tok.private_key_access(key_id=cert.key_id)
    assert "never extractable" in access and "extractable" not in access and "sensitive" in access, \
        "the badge key must be generated on the token, sensitive and not extractable:\n" + listing
    return tok, cert


def exit_token_signatures(fg, token="token1"):
    """Stops farmgated (checked) and returns the N of its exit line "token <name>: N signatures"."""
    mark = fg.log_mark()
    fg.stop()
    text = fg.new_log(mark)
    m = re.search(r"token %s: (\d+) signatures" % re.escape(token), text)
    assert m, "farmgated logged no \"token %s: N signatures\" line at exit:\n%s" % (token, text[-3000:])
    return int(m.group(1))


# --------------------------------------------------------------------------
# 1. the badge stand-in (client key on a token) -- client side checked against nginx
# --------------------------------------------------------------------------

def test_badge_curl_against_nginx(env):
    """The curl invocation the farmgated tests use for a badge works against a known-good
    server (nginx, ssl_verify_client on), and nginx refuses a client without it."""
    ca = Pki(env, "badge-ca")
    tok, cert = badge(env, ca, "alice")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    ng = TlsNginx(env, crt, key, client_ca=ca.crt, users={cert.sha1: "alice"}).start()
    for proto in ("1.2", "1.3"):
        r = tls_curl(ng.port, "/badge", ca=ca.crt, badge=(tok, cert),
                     args=["--tls-max", proto, "--tlsv" + proto])
        assert r.rc == 0 and r.status == 200, r.summary()
        e = parse_echo(r.response.body)
        assert e.get("user") == "alice" and e.get("proto") == "TLSv" + proto, \
            "nginx did not see the badge's certificate over TLS %s: %s" % (proto, r.text)
    r = tls_curl(ng.port, "/nobadge", ca=ca.crt)
    assert r.status == 400 and "No required SSL certificate" in r.text, \
        "nginx must refuse a client without a certificate: " + r.summary()


# --------------------------------------------------------------------------
# 2. the relayed headers
# --------------------------------------------------------------------------

def _x_arr_ssl_fields(value, what):
    assert value, "%s: no X-ARR-SSL at the backend" % what
    f = value.split("|")
    assert len(f) == 4, "%s: X-ARR-SSL must have 4 |-separated fields: %r" % (what, value)
    return f


def test_require_listener_relays_badge_certificate(env):
    ca = Pki(env, "badge-ca")
    tok, cert = badge(env, ca, "alice")
    srv_ca = Pki(env, "server-ca", cn="Farmgate test server CA")
    crt, key = srv_ca.server_cert(HOST, ["DNS:" + HOST], key_type="rsa")
    ng = echo_nginx(env)
    cfg = make_config(
        listeners=[tls_listener([file_cert(crt, key)], clientCertificates="Require",
                                clientCaFile=ca.crt)],
        farms=[one_farm(ng.port, clientCertRfc9440=True)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    want = pem_der(cert.path)
    # TLS 1.3 with AES-128 and TLS 1.2 with AES-256: the cipher's bits, the server key's bits
    for what, args, bits in (
            ("TLS 1.3 AES-128-GCM", ["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"], "128"),
            ("TLS 1.2 ECDHE-RSA-AES256-GCM", ["--tlsv1.2", "--tls-max", "1.2", "--ciphers",
                                               "ECDHE-RSA-AES256-GCM-SHA384"], "256")):
        r = tls_curl(fg.port, "/who?x=1", ca=srv_ca.crt, badge=(tok, cert), args=args)
        assert r.rc == 0 and r.status == 200, "%s: %s\n%s" % (what, r.summary(), env.log_tails())
        e = echo_fields(r.text)
        assert e.get("uri") == "/who?x=1", "%s: %r" % (what, r.text)
        cc = e.get("cc", "")
        assert cc and base64.b64decode(cc, validate=True) == want, \
            "%s: X-ARR-ClientCert must be the base64 of the client certificate's DER:\n got %r\nwant %r" % (
                what, cc[:120], base64.b64encode(want).decode()[:120])
        assert "\n" not in cc and " " not in cc, "%s: X-ARR-ClientCert on one line: %r" % (what, cc)
        f = _x_arr_ssl_fields(e.get("ssl"), what)
        assert f[0] == "2048", "%s: X-ARR-SSL server key bits (RSA-2048 server key): %r" % (what, e["ssl"])
        assert f[1] == bits, "%s: X-ARR-SSL cipher bits, expected %s: %r" % (what, bits, e["ssl"])
        assert f[2] == "CN=Farmgate test server CA", "%s: X-ARR-SSL server certificate issuer: %r" % (
            what, e["ssl"])
        assert f[3] == "CN=" + HOST, "%s: X-ARR-SSL server certificate subject: %r" % (what, e["ssl"])
        assert e.get("xfp") == "https", "%s: X-Forwarded-Proto must be https: %r" % (what, r.text)
        rfc = e.get("rfc", "")
        assert re.fullmatch(r":[A-Za-z0-9+/=]+:", rfc) and base64.b64decode(rfc[1:-1]) == want, \
            "%s: RFC 9440 Client-Cert must be :<base64 DER>: of the same certificate: %r" % (what, rfc[:120])
        assert e.get("chain") == "", "%s: no intermediates sent, no Client-Cert-Chain: %r" % (what, e.get("chain"))
    # an EC server key: X-ARR-SSL says 256
    ec_crt, ec_key = srv_ca.server_cert("ec." + HOST, ["DNS:ec." + HOST], key_type="ec")
    cfg["listeners"] = [tls_listener([file_cert(ec_crt, ec_key)], clientCertificates="Require",
                                     clientCaFile=ca.crt)]
    fg2 = env.farmgated(cfg)
    r = tls_curl(fg2.port, "/ec", ca=srv_ca.crt, badge=(tok, cert), name="ec." + HOST,
                 args=["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"])
    assert r.rc == 0 and r.status == 200, r.summary()
    f = _x_arr_ssl_fields(echo_fields(r.text).get("ssl"), "P-256 server key")
    assert f[:2] == ["256", "256"] and f[3] == "CN=ec." + HOST, \
        "P-256 server key and ChaCha20: X-ARR-SSL %r" % echo_fields(r.text).get("ssl")


def test_client_chain_and_verify_depth(env):
    """A client certificate from an intermediate CA (the client sends the intermediate):
    accepted with clientCaFile = the root, Client-Cert-Chain carries the intermediate; with
    verifyDepth 0 (no intermediate CA allowed) it is refused, a certificate issued by the root
    itself still passes; verifyDepth 1 accepts the chain."""
    root = Pki(env, "root")
    sub = Pki(env, "sub", parent=root)
    crt, key = root.server_cert(HOST, ["DNS:" + HOST])
    leaf, leaf_key = sub.software_client("deep", "deep-user")
    bundle = env.write_text("deep-bundle.pem", open(leaf).read() + open(sub.crt).read())
    flat, flat_key = root.software_client("flat", "flat-user")
    be = env.backend()
    cfg = make_config(
        listeners=[tls_listener([file_cert(crt, key)], clientCertificates="Require", clientCaFile=root.crt),
                   tls_listener([file_cert(crt, key)], clientCertificates="Require", clientCaFile=root.crt,
                                verifyDepth=0),
                   tls_listener([file_cert(crt, key)], clientCertificates="Require", clientCaFile=root.crt,
                                verifyDepth=1)],
        farms=[one_farm(be.port, clientCertRfc9440=True)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    r = tls_curl(fg.ports[0], "/deep", ca=root.crt, cert=bundle, key=leaf_key)
    assert r.status == 200, r.summary()
    q = be.requests[-1]
    assert q.header_all("X-ARR-ClientCert") == [der_b64(leaf)], \
        "X-ARR-ClientCert must be the client's own certificate, not its chain: %r" % q.head[:3000]
    chain = q.header("Client-Cert-Chain")
    assert chain, "the client sent an intermediate: Client-Cert-Chain expected: %r" % q.head[:3000]
    items = [c.strip() for c in chain.split(",")]
    assert all(re.fullmatch(r":[A-Za-z0-9+/=]+:", c) for c in items), "RFC 9440 list of byte sequences: %r" % chain
    ders = [base64.b64decode(c[1:-1]) for c in items]
    assert ders[0] == pem_der(sub.crt) and pem_der(leaf) not in ders, \
        "Client-Cert-Chain must start with the intermediate and not hold the client's certificate: %r" % chain

    n = be.count
    r = tls_curl(fg.ports[1], "/deep", ca=root.crt, cert=bundle, key=leaf_key)
    assert_refused(r, "verifyDepth 0 (no intermediate CA), a chain with an intermediate")
    r = tls_curl(fg.ports[1], "/flat", ca=root.crt, cert=flat, key=flat_key)
    assert r.status == 200, "verifyDepth 0 must accept a certificate issued by the root: " + r.summary()
    r = tls_curl(fg.ports[2], "/deep2", ca=root.crt, cert=bundle, key=leaf_key)
    assert r.status == 200, "verifyDepth 1 must accept a chain with one intermediate: " + r.summary()
    assert [q.target for q in be.requests[n:]] == ["/flat", "/deep2"], [q.target for q in be.requests[n:]]


# --------------------------------------------------------------------------
# 3. spoofed headers never reach a backend
# --------------------------------------------------------------------------

def _spoof_headers(extra_names=()):
    hs = [("X-ARR-ClientCert", SPOOF_B64), ("x-arr-clientcert", SPOOF_B64),
          ("X-ARR-SSL", "4096|256|CN=Evil CA|CN=evil"), ("Client-Cert", ":%s:" % SPOOF_B64),
          ("CLIENT-CERT-CHAIN", ":%s:" % SPOOF_B64), ("X-Forwarded-Proto", "https"),
          # CGI-style backends read X_ARR_ClientCert as X-ARR-ClientCert
          ("X_ARR_ClientCert", SPOOF_B64), ("client_cert", ":%s:" % SPOOF_B64)]
    return hs + [(n, SPOOF_B64) for n in extra_names] + \
        [(n.replace("-", "_"), SPOOF_B64) for n in extra_names]


def test_spoofed_certificate_headers_removed(env):
    ca = Pki(env, "badge-ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    alice, alice_key = ca.software_client("alice", "alice")
    std = env.backend(name="std")
    cus = env.backend(name="custom")
    custom_names = ("X-Badge-Cert", "X-Badge-SSL")
    cfg = make_config(
        listeners=[plain_listener(),
                   tls_listener([file_cert(crt, key)], clientCertificates="Accept", clientCaFile=ca.crt)],
        farms=[one_farm(std.port, "std", clientCertRfc9440=True),
               one_farm(cus.port, "custom", clientCertRfc9440=True, clientCertHeaderName="X-Badge-Cert",
                        sslHeaderName="X-Badge-SSL")],
        rules=[{"name": "custom", "stopProcessing": True, "match": {"url": "^custom/.*"},
                "action": {"type": "Rewrite", "url": "http://custom/{R:0}"}}, route_all("std")])
    fg = env.farmgated(cfg)
    plain, tls = fg.ports
    spoof = _spoof_headers(custom_names)
    hargs = []
    for k, v in spoof:
        hargs += ["-H", "%s: %s" % (k, v)]

    def forbidden_at(q, names, what):
        norm = {n.lower().replace("_", "-") for n in names}
        got = [(k, v) for k, v in q.headers if k.lower().replace("_", "-") in norm]
        assert not got, "%s: the backend received client-sent %s:\n%r" % (what, got, q.head[:3000])

    # plain HTTP listener
    # (the custom farm loses the default names too: no backend can be fooled by them)
    for path, be, names in (("/std/p", std, RELAYED), ("/custom/p", cus, RELAYED + custom_names)):
        r = http_request(plain, "GET", path, host=HOST, headers=spoof)
        assert r.status == 200, r.summary()
        q = be.requests[-1]
        assert q.target == path, q.target
        forbidden_at(q, names, "plain listener, " + path)
        assert q.header_all("X-Forwarded-Proto") == ["http"], \
            "plain listener: X-Forwarded-Proto must be farmgated's http only: %r" % q.head[:3000]
    # HTTPS, Accept listener, client without a certificate
    for path, be, names in (("/std/t", std, RELAYED[:1] + RELAYED[2:]),
                            ("/custom/t", cus, RELAYED + custom_names[:1])):
        r = tls_curl(tls, path, ca=ca.crt, args=hargs)
        assert r.status == 200, r.summary()
        q = be.requests[-1]
        assert q.target == path, q.target
        forbidden_at(q, names, "HTTPS without a client certificate, " + path)
        assert q.header_all("X-Forwarded-Proto") == ["https"], \
            "HTTPS: X-Forwarded-Proto must be https, once: %r" % q.head[:3000]
    # the SSL summary header is farmgated's own on HTTPS (not the forged one)
    for q, n in ((std.requests[-1], "X-ARR-SSL"), (cus.requests[-1], "X-Badge-SSL")):
        vals = q.header_all(n)
        assert len(vals) == 1 and "Evil" not in vals[0] and SPOOF_B64 not in vals[0], \
            "%s on HTTPS must be farmgated's one summary: %r" % (n, vals)
    # HTTPS with a real certificate and forged copies: exactly the real one
    for path, be, name in (("/std/c", std, "X-ARR-ClientCert"), ("/custom/c", cus, "X-Badge-Cert")):
        r = tls_curl(tls, path, ca=ca.crt, cert=alice, key=alice_key, args=hargs)
        assert r.status == 200, r.summary()
        q = be.requests[-1]
        assert q.header_all(name) == [der_b64(alice)], \
            "%s: the backend must get exactly the verified certificate: %r" % (name, q.header_all(name))
        assert q.header_all("Client-Cert") == [":%s:" % der_b64(alice)], q.header_all("Client-Cert")
        # (curl sends the CA it built the chain with: a Client-Cert-Chain may come, not the forged one)
        chain = q.header_all("Client-Cert-Chain")
        assert len(chain) <= 1 and all(SPOOF_B64 not in v for v in chain), \
            "Client-Cert-Chain must be only what the client's handshake sent: %r" % chain


# --------------------------------------------------------------------------
# 4. Require: missing, untrusted, expired certificates
# --------------------------------------------------------------------------

def _require_setup(env, failure):
    ca = Pki(env, "badge-ca")
    other = Pki(env, "other-ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    be = env.backend()
    opts = {"clientCertificates": "Require", "clientCaFile": ca.crt}
    if failure:
        opts["clientCertFailure"] = failure
    cfg = make_config(listeners=[tls_listener([file_cert(crt, key)], **opts)],
                      farms=[one_farm(be.port)], rules=[route_all("web")])
    return ca, other, be, env.farmgated(cfg)


def test_require_handshake_refuses(env):
    ca, other, be, fg = _require_setup(env, None)  # Handshake is the default
    good, good_key = ca.software_client("alice", "alice")
    stranger, stranger_key = other.software_client("mallory", "mallory")
    old, old_key = ca.expired_client("old", "old-badge")
    for what, kw in (("no certificate", {}),
                     ("certificate from an untrusted CA", {"cert": stranger, "key": stranger_key}),
                     ("expired certificate", {"cert": old, "key": old_key})):
        for tls in ("1.2", "1.3"):
            r = tls_curl(fg.port, "/refused", ca=ca.crt, args=["--tlsv" + tls, "--tls-max", tls], **kw)
            assert_refused(r, "Require + Handshake, %s, TLS %s" % (what, tls))
    # the client sees why over TLS 1.2 (alert during the handshake)
    rc, out = s_client(fg.port, ["-tls1_2", "-CAfile", ca.crt], name=HOST, request=get_request())
    assert rc != 0 and re.search(r"alert (handshake failure|certificate required|bad certificate)", out), \
        "no certificate, TLS 1.2: expected a TLS alert from the server:\n" + out[-2000:]
    # TLS 1.3: the client's handshake is over before the server checks its certificate, and an
    # HTTP client sends its request at once; the alert must still reach it (not be lost to a
    # TCP reset because the request was left unread), as with openssl s_server
    for what, cert, key in (("no certificate", None, None), ("untrusted", stranger, stranger_key)):
        for i in range(10):  # a race: the request must be in farmgated's socket when it closes
            got = tls13_request_then_read(fg.port, ca.crt, cert, key)
            want = "TLSV13_ALERT_CERTIFICATE_REQUIRED" if cert is None else "TLSV1_ALERT_UNKNOWN_CA"
            assert got == want, \
                "TLS 1.3, %s, request sent right after the handshake: the client must read the " \
                "server's alert %s, got %s" % (what, want, got)
    assert be.count == 0, "a refused client's request reached the backend: %r" % be.requests
    r = tls_curl(fg.port, "/ok", ca=ca.crt, cert=good, key=good_key)
    assert r.status == 200 and be.count == 1, "a valid certificate must pass: " + r.summary()


def tls13_request_then_read(port, ca, cert=None, key=None):
    """Python's ssl as a TLS 1.3 client: handshake, send a request at once, read. Returns the
    SSL error's reason (e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED), or what happened instead."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert:
        ctx.load_cert_chain(cert, key)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        t = ctx.wrap_socket(sock, server_hostname=HOST)
    except ssl.SSLError as e:
        sock.close()
        return "handshake: %s" % e
    try:
        t.sendall(get_request())
        data = t.recv(200)
        return "data %r" % data[:80]
    except ssl.SSLError as e:
        return e.reason or "SSLError without an alert (%s)" % e
    except OSError as e:
        return "%s (%s)" % (type(e).__name__, e)
    finally:
        t.close()


def test_require_forbidden_403(env):
    ca, other, be, fg = _require_setup(env, "Forbidden")
    good, good_key = ca.software_client("alice", "alice")
    stranger, stranger_key = other.software_client("mallory", "mallory")
    old, old_key = ca.expired_client("old", "old-badge")
    for what, kw, sub in (("no certificate", {}, "403.7"),
                          ("certificate from an untrusted CA", {"cert": stranger, "key": stranger_key}, "403.16"),
                          ("expired certificate", {"cert": old, "key": old_key}, "403.17")):
        for tls in ("1.2", "1.3"):
            r = tls_curl(fg.port, "/refused", ca=ca.crt, args=["--tlsv" + tls, "--tls-max", tls], **kw)
            assert r.rc == 0 and r.status == 403, \
                "Require + Forbidden, %s, TLS %s: expected HTTP 403: %s" % (what, tls, r.summary())
            assert sub in r.response.reason + " " + r.text, \
                "Require + Forbidden, %s: the 403 must give IIS's %s: %s" % (what, sub, r.summary())
    assert be.count == 0, "a refused client's request reached the backend: %r" % be.requests
    r = tls_curl(fg.port, "/ok", ca=ca.crt, cert=good, key=good_key)
    assert r.status == 200 and be.count == 1, "a valid certificate must pass: " + r.summary()
    assert be.requests[0].header("X-ARR-ClientCert") == der_b64(good)


# --------------------------------------------------------------------------
# 5. CRLs, Accept
# --------------------------------------------------------------------------

def test_crl_revoked_refused_and_accept_optional(env):
    ca = Pki(env, "badge-ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    alice, alice_key = ca.software_client("alice", "alice")
    bob, bob_key = ca.software_client("bob", "bob")
    crl_pem = ca.crl([bob], name="badge.crl")
    crl_der = ca.crl([bob], name="badge-der.crl", der=True)
    with open(crl_der, "rb") as f:
        assert not f.read(16).startswith(b"-----"), "DER CRL expected"
    listed = re.findall(r"Serial Number: ([0-9A-Fa-f:]+)", run([OPENSSL, "crl", "-in", crl_pem, "-noout", "-text"])[1])
    assert [x.upper().replace(":", "") for x in listed] == [ca.serial_hex(bob)], \
        "the CRL must list exactly bob's serial %s: %s" % (ca.serial_hex(bob), listed)
    expired_crl = ca.crl([], name="old.crl", last_update="20200101000000Z", next_update="20200201000000Z")
    be = env.backend()
    fc = file_cert(crt, key)
    req = {"clientCertificates": "Require", "clientCaFile": ca.crt}
    cfg = make_config(
        listeners=[tls_listener([fc], crlFiles=[crl_pem], **req),
                   tls_listener([fc], crlFiles=[crl_der], clientCertFailure="Forbidden", **req),
                   tls_listener([fc], clientCertificates="Accept", clientCaFile=ca.crt),
                   tls_listener([fc], crlFiles=[expired_crl], **req),
                   tls_listener([fc], **req)],
        farms=[one_farm(be.port)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    hs, fb, acc, stale, nocrl = fg.ports

    def n_at_backend(path):
        return sum(1 for q in be.requests if q.target == path)

    # PEM CRL, Handshake
    r = tls_curl(hs, "/alice-hs", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200, "alice is not revoked: " + r.summary()
    for tls in ("1.2", "1.3"):
        r = tls_curl(hs, "/bob-hs", ca=ca.crt, cert=bob, key=bob_key, args=["--tlsv" + tls, "--tls-max", tls])
        assert_refused(r, "revoked bob, TLS %s" % tls)
    assert n_at_backend("/bob-hs") == 0
    # DER CRL, Forbidden
    r = tls_curl(fb, "/alice-fb", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200, "alice, DER CRL: " + r.summary()
    r = tls_curl(fb, "/bob-fb", ca=ca.crt, cert=bob, key=bob_key)
    assert r.status == 403 and "403.13" in r.response.reason + " " + r.text, \
        "revoked bob, Forbidden: expected 403 with IIS's 403.13: " + r.summary()
    assert n_at_backend("/bob-fb") == 0
    # without crlFiles bob passes (the CRL is what refuses him)
    r = tls_curl(nocrl, "/bob-nocrl", ca=ca.crt, cert=bob, key=bob_key)
    assert r.status == 200, "no crlFiles: bob's certificate is valid: " + r.summary()
    # an expired CRL refuses everyone
    r = tls_curl(stale, "/alice-stale", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status != 200 and n_at_backend("/alice-stale") == 0, \
        "an expired CRL must refuse every client: " + r.summary()
    # Accept: no certificate is fine, and nothing is relayed
    r = tls_curl(acc, "/anon", ca=ca.crt)
    assert r.status == 200, "Accept without a client certificate: " + r.summary()
    q = [q for q in be.requests if q.target == "/anon"][0]
    assert not q.has("X-ARR-ClientCert") and not q.has("Client-Cert"), \
        "no client certificate: nothing to relay: %r" % q.head[:3000]
    assert q.header_all("X-Forwarded-Proto") == ["https"], q.head[:3000]
    r = tls_curl(acc, "/acc-alice", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200
    q = [q for q in be.requests if q.target == "/acc-alice"][0]
    assert q.header_all("X-ARR-ClientCert") == [der_b64(alice)], q.head[:3000]
    # Accept still refuses an invalid certificate (as IIS: 403.16 rather than anonymous)
    other = Pki(env, "other-ca")
    mal, mal_key = other.software_client("mallory", "mallory")
    r = tls_curl(acc, "/acc-mallory", ca=ca.crt, cert=mal, key=mal_key)
    assert_refused(r, "Accept, a certificate from an untrusted CA")
    assert n_at_backend("/acc-mallory") == 0


def test_reload_renews_crl_and_server_certificate(env):
    """"An expired CRL refuses everyone: renew it and reload": after the reload the renewed
    CRL and a renewed server certificate (same paths) are in force; a reload whose keyFile
    became group-readable fails and the running listener keeps serving."""
    ca = Pki(env, "badge-ca")
    alice, alice_key = ca.software_client("alice", "alice")
    bob, bob_key = ca.software_client("bob", "bob")
    crl = ca.crl([], name="badge.crl", last_update="20200101000000Z", next_update="20200201000000Z")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    first_der = pem_der(crt)
    be = env.backend()
    cfg = make_config(listeners=[tls_listener([file_cert(crt, key)], clientCertificates="Require",
                                              clientCaFile=ca.crt, crlFiles=[crl])],
                      farms=[one_farm(be.port)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    assert_refused(tls_curl(fg.port, "/before", ca=ca.crt, cert=alice, key=alice_key),
                   "alice with an expired CRL")
    assert be.count == 0
    assert ca.crl([bob], name="badge.crl") == crl  # renewed in place, now revoking bob
    ca.server_cert(HOST, ["DNS:" + HOST])          # a new key and certificate, same paths
    os.chmod(key, 0o600)
    assert pem_der(crt) != first_der
    ok, line = fg.reload(cfg)
    assert ok, "reload with a renewed CRL and certificate failed: %s\n%s" % (line, env.log_tails())
    r = tls_curl(fg.port, "/after", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200, "alice after the CRL was renewed and farmgated reloaded: " + r.summary()
    assert_refused(tls_curl(fg.port, "/bob", ca=ca.crt, cert=bob, key=bob_key), "bob, revoked by the renewed CRL")
    rc, out = s_client(fg.port, ["-CAfile", ca.crt, "-cert", alice, "-key", alice_key], name=HOST,
                       request=get_request(HOST, "/sclient"))
    assert rc == 0 and peer_der(out) == pem_der(crt), "after the reload the renewed certificate is served"
    # a broken reload keeps the running configuration
    os.chmod(key, 0o640)
    ok, line = fg.reload(cfg)
    assert not ok, "a group-readable keyFile must fail the reload: " + line
    r = tls_curl(fg.port, "/still", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200, "after a failed reload the listener keeps serving: " + r.summary()
    assert [q.target for q in be.requests] == ["/after", "/sclient", "/still"], [q.target for q in be.requests]


# --------------------------------------------------------------------------
# 6. server certificates: files, token by thumbprint, SNI; keyFile permissions
# --------------------------------------------------------------------------

def test_server_certificates_file_token_sni(env):
    ca = Pki(env, "ca")
    a_crt, a_key = ca.server_cert("a.test", ["DNS:a.test"])
    w_crt, w_key = ca.server_cert("wild", ["DNS:*.w.test"])
    tok = SoftToken(env)  # farmgated's token (SOFTHSM2_CONF exported to it)
    b = tok.server_cert(ca, "rsa2048", "b.test", ["DNS:b.test"])
    access, listing = tok.private_key_access(key_id=b.key_id)
    assert "never extractable" in access, listing
    be = env.backend()
    thumb = " ".join(b.sha1[i:i + 2] for i in range(0, 40, 2))  # "3B 5F ..." as in the docs
    cfg = make_config(
        listeners=[tls_listener([file_cert(a_crt, a_key),
                                 {"certificateHash": thumb, "certificateToken": "token1"},
                                 file_cert(w_crt, w_key)])],
        farms=[one_farm(be.port)], rules=[route_all("web")], tokens=[tok.token_cfg()])
    fg = env.farmgated(cfg)
    a, w = pem_der(a_crt), pem_der(w_crt)
    full_b = 0
    for sni, want, what in (("a.test", a, "a.test"), ("b.test", pem_der(b.path), "b.test (token)"),
                            ("B.TEST", pem_der(b.path), "b.test (token), SNI in upper case"),
                            (None, a, "no SNI: the first"), ("c.test", a, "unknown name: the first"),
                            ("x.w.test", w, "*.w.test"), ("w.test", a, "w.test is not *.w.test"),
                            ("y.x.w.test", a, "*.w.test covers one label only")):
        for tls in ("-tls1_2", "-tls1_3"):
            rc, out = s_client(fg.port, [tls, "-CAfile", ca.crt], name=sni,
                               request=get_request(sni or HOST, "/sni"))
            assert rc == 0 and "HTTP/1.1 200" in out, "SNI %s %s: %s" % (sni, tls, out[-2000:])
            assert peer_der(out) == want, "SNI %r (%s): wrong server certificate:\n%s" % (
                sni, what, out[:1500])
            assert "Verify return code: 0 (ok)" in out, out[-2000:]
            if want == pem_der(b.path):
                full_b += 1
    # curl verifies the name against each certificate
    for name in ("a.test", "b.test", "x.w.test"):
        r = tls_curl(fg.port, "/curl", ca=ca.crt, name=name)
        assert r.status == 200, "%s: %s" % (name, r.summary())
    n = exit_token_signatures(fg)
    assert n >= full_b + 1, "every full handshake with the token certificate is signed on the token: " \
        "%d signatures for %d handshakes" % (n, full_b + 1)


def test_token_certificate_with_chain_file(env):
    root = Pki(env, "root")
    sub = Pki(env, "sub", parent=root)
    tok = SoftToken(env)
    cert = tok.server_cert(sub, "ec256", HOST, ["DNS:" + HOST])
    be = env.backend()
    cfg = make_config(
        listeners=[tls_listener([{"certificateHash": cert.sha256, "chainFile": sub.crt}]),
                   tls_listener([{"certificateHash": cert.sha256}])],
        farms=[one_farm(be.port)], rules=[route_all("web")], tokens=[tok.token_cfg()])
    fg = env.farmgated(cfg)
    r = tls_curl(fg.ports[0], "/chain", ca=root.crt)
    assert r.status == 200, "the token certificate and its chainFile must verify against the root: " + r.summary()
    rc, out = s_client(fg.ports[0], ["-CAfile", root.crt, "-showcerts"], name=HOST, request=get_request())
    certs = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", out, re.S)
    ders = [base64.b64decode("".join(c.split())) for c in certs]
    assert ders[:2] == [pem_der(cert.path), pem_der(sub.crt)], \
        "the server must send its certificate, then chainFile's intermediate:\n" + out[:3000]
    # without chainFile the client cannot build the chain (shows the test can fail)
    r = tls_curl(fg.ports[1], "/nochain", ca=root.crt)
    assert r.status is None and r.rc == 60, "no chainFile: curl must fail to verify: " + r.summary()


def _keyfile_cfg(env, ca, mode):
    a_crt, a_key = ca.server_cert("a.test", ["DNS:a.test"])
    b_crt, b_key = ca.server_cert("b.test", ["DNS:b.test"])
    os.chmod(a_key, 0o600)
    os.chmod(b_key, mode)
    cfg = make_config(listeners=[{"address": "127.0.0.1", "port": harness.free_port(),
                                  "ssl": {"certificates": [{"certificateFile": a_crt, "keyFile": a_key},
                                                           {"certificateFile": b_crt, "keyFile": b_key}]}}],
                      farms=[one_farm(8081)], rules=[route_all("web")])
    return env.write_json("keyfile-%o.json" % mode, cfg)


def test_keyfile_readable_by_others_is_config_error(env):
    ca = Pki(env, "ca")
    p = env.cli("-t", "-c", _keyfile_cfg(env, ca, 0o600))
    assert p.returncode == 0 and "configuration OK" in p.output, \
        "keyFile mode 0600 must pass farmgated -t: exit %d %s" % (p.returncode, p.output)
    for mode in (0o640, 0o604, 0o644):
        p = env.cli("-t", "-c", _keyfile_cfg(env, ca, mode))
        assert p.returncode == 1, "keyFile mode %o: farmgated -t must exit 1, got %d: %s" % (
            mode, p.returncode, p.output)
        assert "$.listeners[0].ssl.certificates[1].keyFile" in p.output, \
            "keyFile mode %o: the error must name $.listeners[0].ssl.certificates[1].keyFile: %s" % (
                mode, p.output)
        assert "configuration OK" not in p.output, p.output


def test_ssl_config_errors_name_json_path(env):
    ca = Pki(env, "ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    os.chmod(key, 0o600)

    def base():
        return make_config(listeners=[{"address": "127.0.0.1", "port": harness.free_port(), "ssl": {
            "certificates": [{"certificateFile": crt, "keyFile": key}],
            "clientCertificates": "Require", "clientCaFile": ca.crt}}],
            farms=[one_farm(8081)], rules=[route_all("web")])

    p = env.cli("-t", "-c", env.write_json("ssl-ok.json", base()))
    assert p.returncode == 0 and "configuration OK" in p.output, p.output
    ssl_path = "$.listeners[0].ssl"
    cases = [
        ("no certificates", lambda s: s.update(certificates=[]), ssl_path + ".certificates"),
        ("verifyDepth -1 (range 0..16)", lambda s: s.update(verifyDepth=-1), ssl_path + ".verifyDepth"),
        ("verifyDepth 17", lambda s: s.update(verifyDepth=17), ssl_path + ".verifyDepth"),
        ("clientCertificates Sometimes", lambda s: s.update(clientCertificates="Sometimes"),
         ssl_path + ".clientCertificates"),
        ("Require without clientCaFile", lambda s: s.pop("clientCaFile"), ssl_path),
        ("clientCertFailure Maybe", lambda s: s.update(clientCertFailure="Maybe"), ssl_path + ".clientCertFailure"),
        ("missing CRL file", lambda s: s.update(crlFiles=[ca.path("none.crl")]), ssl_path + ".crlFiles[0]"),
        ("bad rotation", lambda s: s.update(sessionTicketKeyRotation="1:xx"), ssl_path + ".sessionTicketKeyRotation"),
        ("unknown ssl field", lambda s: s.update(cipherSuites="ALL"), ssl_path + ".cipherSuites"),
        ("missing certificateFile", lambda s: s["certificates"][0].update(certificateFile=ca.path("none.crt")),
         ssl_path + ".certificates[0].certificateFile"),
        ("key not matching the certificate",
         lambda s: s["certificates"][0].update(certificateFile=ca.crt), ssl_path + ".certificates[0]"),
        ("certificateHash without a token", lambda s: s["certificates"].append({"certificateHash": "AB" * 20}),
         ssl_path + ".certificates[1]"),
    ]
    problems = []
    for i, (what, mutate, jpath) in enumerate(cases):
        cfg = base()
        mutate(cfg["listeners"][0]["ssl"])
        p = env.cli("-t", "-c", env.write_json("ssl-bad-%02d.json" % i, cfg))
        if p.returncode != 1 or jpath not in p.output or "configuration OK" in p.output:
            problems.append("%s: exit %d, expected 1 naming %s: %s" % (what, p.returncode, jpath, p.output.strip()[:300]))
    assert not problems, "%d of %d broken ssl configs mishandled by -t:\n  %s" % (
        len(problems), len(cases), "\n  ".join(problems))


# --------------------------------------------------------------------------
# 7. rules: {HTTPS}, {SERVER_PORT_SECURE}, {CERT_*}; HTTP -> HTTPS redirect
# --------------------------------------------------------------------------

def test_rules_https_and_certificate_variables(env):
    ca = Pki(env, "badge", cn="Farmgate test badge")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    alice, alice_key = ca.software_client("alice", "alice", subject="/O=Farmgate tests/CN=alice")
    bob, bob_key = ca.software_client("bob", "bob", subject="/O=Farmgate tests/CN=bob")
    serial = ca.serial_hex(alice)
    serial_dashed = "-".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()
    be = env.backend()
    who = "^who$"
    rules = [
        {"name": "to-https", "patternSyntax": "Wildcard", "stopProcessing": True, "match": {"url": "*"},
         "conditions": [{"input": "{HTTPS}", "pattern": "off"}],
         "action": {"type": "Redirect", "url": "https://{HTTP_HOST}/{R:0}", "redirectType": "Permanent"}},
        {"name": "alice-exact", "stopProcessing": True, "match": {"url": who},
         "conditions": [{"input": "{CERT_SUBJECT}", "pattern": "^O=Farmgate tests, CN=alice$"},
                        {"input": "{CERT_ISSUER}", "pattern": "^CN=Farmgate test badge$"},
                        {"input": "{CERT_SERIALNUMBER}", "pattern": "^%s$" % serial_dashed},
                        {"input": "{SERVER_PORT_SECURE}", "pattern": "^1$"}],
         "action": {"type": "Rewrite", "url": "http://app/alice-exact"}},
        {"name": "alice-loose", "stopProcessing": True, "match": {"url": who},
         "conditions": [{"input": "{CERT_SUBJECT}", "pattern": "CN=alice"}],
         "action": {"type": "Rewrite", "url": "http://app/alice-loose"}},
        {"name": "anonymous", "stopProcessing": True, "match": {"url": who},
         "conditions": [{"input": "{CERT_SUBJECT}", "pattern": "^$"},
                        {"input": "{CERT_SERIALNUMBER}", "pattern": "^$"},
                        {"input": "{HTTPS}", "pattern": "^on$"}],
         "action": {"type": "Rewrite", "url": "http://app/anonymous"}},
        {"name": "others", "stopProcessing": True, "match": {"url": who},
         "action": {"type": "CustomResponse", "statusCode": 403, "statusReason": "Not Alice",
                    "statusDescription": "badge refused"}},
        {"name": "vars", "stopProcessing": True, "match": {"url": "^vars$"},
         "action": {"type": "Rewrite", "url": "http://app/vars/{HTTPS}/{SERVER_PORT_SECURE}/s{CERT_SERIALNUMBER}",
                    "appendQueryString": False}},
    ]
    cfg = make_config(
        listeners=[plain_listener(),
                   tls_listener([file_cert(crt, key)], clientCertificates="Accept", clientCaFile=ca.crt)],
        farms=[one_farm(be.port, "app")], rules=rules)
    fg = env.farmgated(cfg)
    plain, tls = fg.ports

    # plain: the ordinary redirect rule
    r = http_request(plain, "GET", "/a/b?x=1", host="www.example.test")
    assert r.status == 301 and r.header("Location") == "https://www.example.test/a/b?x=1", \
        "{HTTPS} off on the plain listener: 301 to https://: " + r.summary()
    assert be.count == 0
    # HTTPS: no redirect; certificate variables
    r = tls_curl(tls, "/vars?q=1", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200, r.summary()
    assert be.requests[-1].target == "/vars/on/1/s" + serial_dashed, \
        "{HTTPS}/{SERVER_PORT_SECURE}/{CERT_SERIALNUMBER} over TLS with alice (serial %s): backend got %r" % (
            serial, be.requests[-1].target)
    r = tls_curl(tls, "/vars", ca=ca.crt)
    assert r.status == 200 and be.requests[-1].target == "/vars/on/1/s", \
        "no client certificate: {CERT_SERIALNUMBER} empty: %s, backend got %r" % (r.summary(), be.requests[-1].target)
    r = tls_curl(tls, "/who", ca=ca.crt, cert=alice, key=alice_key)
    assert r.status == 200 and be.requests[-1].target == "/alice-exact", \
        "alice: {CERT_SUBJECT} 'O=Farmgate tests, CN=alice', {CERT_ISSUER} 'CN=Farmgate test badge', " \
        "{CERT_SERIALNUMBER} %r expected (alice-loose = only the subject's CN matched): %s -> %r" % (
            serial_dashed, r.summary(), be.requests[-1].target)
    n = be.count
    r = tls_curl(tls, "/who", ca=ca.crt, cert=bob, key=bob_key)
    assert r.status == 403 and r.response.reason == "Not Alice" and be.count == n, \
        "bob must get the CustomResponse: " + r.summary()
    r = tls_curl(tls, "/who", ca=ca.crt)
    assert r.status == 200 and be.requests[-1].target == "/anonymous", \
        "no certificate: {CERT_SUBJECT} empty, {HTTPS} on: %s -> %r" % (r.summary(), be.requests[-1].target)
    r = http_request(plain, "GET", "/who", host="www.example.test")
    assert r.status == 301 and r.header("Location") == "https://www.example.test/who", r.summary()


# --------------------------------------------------------------------------
# 8. resumption, tickets, ALPN, protocol versions and the cipher profile
# --------------------------------------------------------------------------

def _resume(port, ca, tls, sess, extra=(), path="/r"):
    """Two s_client connections: -sess_out then -sess_in. Returns (first, second) outputs."""
    outs = []
    for flag in ("-sess_out", "-sess_in"):
        rc, out = s_client(port, [tls, "-CAfile", ca, flag, sess] + list(extra), name=HOST,
                           request=get_request(HOST, path))
        assert rc == 0 and "HTTP/1.1 200" in out, "%s %s: %s" % (tls, flag, out[-2000:])
        outs.append(out)
    return outs


def test_session_resumption(env):
    ca = Pki(env, "ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    alice, alice_key = ca.software_client("alice", "alice")
    be = env.backend()
    cfg = make_config(
        listeners=[tls_listener([file_cert(crt, key)], clientCertificates="Accept", clientCaFile=ca.crt)],
        farms=[one_farm(be.port)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    for tls, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        sess = env.path("sess%s.pem" % tls)
        first, second = _resume(fg.port, ca.crt, tls, sess, ["-cert", alice, "-key", alice_key], "/r" + tls)
        assert re.search(r"^New, %s" % name, first, re.M), first[-2000:]
        assert re.search(r"^Reused, %s" % name, second, re.M), \
            "%s: the second connection must resume the session:\n%s" % (name, second[-2500:])
        # the resumed session still carries the verified client certificate
        got = [q.header_all("X-ARR-ClientCert") for q in be.requests if q.target == "/r" + tls]
        assert got == [[der_b64(alice)]] * 2, \
            "%s: both the full and the resumed connection must relay alice's certificate: %r" % (name, got)


def test_session_ticket_key_rotation(env):
    ca = Pki(env, "ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST])
    be = env.backend()
    cfg = make_config(
        listeners=[tls_listener([file_cert(crt, key)], sessionTicketKeyRotation="00:00:03"),
                   tls_listener([file_cert(crt, key)], sessionTickets=False)],
        farms=[one_farm(be.port)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    sess = env.path("rot.pem")
    t0 = time.monotonic()
    first, second = _resume(fg.ports[0], ca.crt, "-tls1_3", sess)
    took = time.monotonic() - t0
    assert took < 2.5, "two s_client runs took %.1fs: too slow to check a 3 s rotation" % took
    assert "Reused, TLSv1.3" in second, "a fresh ticket must resume:\n" + second[-2000:]
    # 3 s after its key was replaced (at most 3 s from now) a ticket is refused: wait 7 s
    time.sleep(max(0.0, t0 + 7.5 - time.monotonic()))
    rc, out = s_client(fg.ports[0], ["-tls1_3", "-CAfile", ca.crt, "-sess_in", sess], name=HOST,
                       request=get_request())
    assert rc == 0 and "HTTP/1.1 200" in out, out[-2000:]
    assert "New, TLSv1.3" in out and "Reused" not in out, \
        "a ticket whose key was replaced more than sessionTicketKeyRotation ago must not resume:\n" + out[-2000:]
    # sessionTickets false: no RFC 5077 ticket over TLS 1.2 (the default listener sends one)
    for port, want in ((fg.ports[0], True), (fg.ports[1], False)):
        rc, out = s_client(port, ["-tls1_2", "-CAfile", ca.crt], name=HOST, request=get_request())
        assert rc == 0 and "HTTP/1.1 200" in out, out[-2000:]
        assert ("TLS session ticket lifetime hint" in out) == want, \
            "sessionTickets %s: TLS 1.2 ticket %s expected:\n%s" % (
                want, "a" if want else "no", out[-2500:])


def test_alpn_versions_and_cipher_profile(env):
    ca = Pki(env, "ca")
    crt, key = ca.server_cert(HOST, ["DNS:" + HOST], key_type="rsa")
    be = env.backend()
    cfg = make_config(listeners=[tls_listener([file_cert(crt, key)])],
                      farms=[one_farm(be.port)], rules=[route_all("web")])
    fg = env.farmgated(cfg)
    base = ["-CAfile", ca.crt]
    rc, out = s_client(fg.port, base + ["-alpn", "h2,http/1.1"], name=HOST, request=get_request())
    assert rc == 0 and "ALPN protocol: http/1.1" in out and "HTTP/1.1 200" in out, \
        "ALPN h2,http/1.1 must select http/1.1:\n" + out[-2000:]
    n = be.count
    # TLS 1.1 and 1.0 are refused by the server (the client offers them: SECLEVEL=0)
    for flag in ("-tls1_1", "-tls1"):
        rc, out = s_client(fg.port, base + [flag, "-cipher", "DEFAULT@SECLEVEL=0"], name=HOST,
                           request=get_request())
        assert rc != 0 and "alert protocol version" in out, \
            "%s must be refused by the server with a protocol_version alert:\n%s" % (flag, out[-2000:])
    # outside the intermediate profile: no ECDHE, CBC, or a group not offered
    for what, args in (("RSA key exchange", ["-tls1_2", "-cipher", "AES128-GCM-SHA256"]),
                       ("CBC", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"]),
                       ("only ffdhe2048", ["-tls1_3", "-groups", "ffdhe2048"]),
                       ("only P-521", ["-tls1_3", "-groups", "P-521"])):
        rc, out = s_client(fg.port, base + args, name=HOST, request=get_request())
        assert rc != 0 and "HTTP/1.1 200" not in out, "%s must be refused:\n%s" % (what, out[-2000:])
    # inside it
    for what, args, want in (("TLS 1.2 ECDHE-RSA-AES128-GCM", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                              "ECDHE-RSA-AES128-GCM-SHA256"),
                             ("TLS 1.2 ChaCha20", ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"],
                              "ECDHE-RSA-CHACHA20-POLY1305"),
                             ("TLS 1.3 X25519", ["-tls1_3", "-groups", "X25519"], "TLS_AES_256_GCM_SHA384"),
                             ("TLS 1.3 P-384", ["-tls1_3", "-groups", "P-384"], "TLS_AES_256_GCM_SHA384")):
        rc, out = s_client(fg.port, base + args, name=HOST, request=get_request())
        assert rc == 0 and "HTTP/1.1 200" in out and re.search(r"Cipher is %s" % want, out), \
            "%s must work:\n%s" % (what, out[-2000:])
    assert be.count == n + 4, "only the 4 accepted connections reach the backend: %d" % (be.count - n)
