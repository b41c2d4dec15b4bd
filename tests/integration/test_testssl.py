"""testssl.sh against farmgated's HTTPS listeners (issue 4) and farmgate-mgmt's (issue 8): no
finding of severity MEDIUM, HIGH or CRITICAL.

Debian's testssl.sh 3.0.8, a full default run (about a minute: no check is deselected, no
--fast), with the test's root CA added to its trust stores (--add-ca) so that the chain of
trust is evaluated. What is under test is what an operator deploys: a server certificate
from an issuing CA (certificateFile = certificate + issuing CA), RSA 2048 or ECDSA P-256,
subjectAltName, serverAuth, 90 days, random 128-bit serial, CRL distribution point and OCSP
URI (tlsbench_pki.OperatorPki, made at test time). Behind it, an ordinary application
(Debian's nginx over plain HTTP) that compresses its HTML and sets the usual security headers
itself, HSTS only for requests that arrived over HTTPS (X-Forwarded-Proto).

How findings are judged (tlsbench_testssl.judge): MEDIUM / HIGH / CRITICAL fail, and so does
any WARN (a check that could not run) other than testssl's own missing GOST engine, and any
missing part of the run. One finding is the application's, not the listener's, and is
allowed but printed: BREACH ("gzip HTTP compression detected": the backend compresses, the
proxy relays it as is; see APP_FINDINGS). With Require, the checks that need application data
(HTTP, client-initiated renegotiation, BREACH) cannot run and are WARNs that are expected
(CLIENT_AUTH_NOT_APPLICABLE). testssl's session resumption probe has a race of its own with
TLS 1.3 (RACY_WARNINGS): the test's own deterministic check (settle_resumption: a request on
each of two s_client connections) decides instead, and must see tickets resume over TLS 1.3
and 1.2 and a session id over TLS 1.2. A few results the HTTPS listener contract implies are
checked too (chain of trust, TLS 1.2 and 1.3 only, X25519, no client renegotiation, HSTS from
the application reaching the client).

Three runs (~1 minute each, release build only): RSA-2048 with clientCertificates Ignore,
P-256 with Accept, RSA-2048 with Require. With the same PKI and backend behind Debian's
nginx with Mozilla's intermediate settings (python3 tests/integration/tlsbench_testssl.py),
testssl reports the same BREACH, OCSP_stapling "not offered" (LOW), and with Mozilla's
`ssl_prefer_server_ciphers off` also cipher_order "NOT a cipher order configured" (HIGH in
testssl 3.0.8): a listener needs a server cipher order (SSL_OP_CIPHER_SERVER_PREFERENCE).

Artifacts stay in the test's temp dir (kept when it fails): testssl-<name>/<name>.json (every
finding), .log (the report), .out (its output).
"""

import json
import re

from harness import curl, free_port, release_only
from mgmt_client import Mgmt
from tlsbench_pki import OperatorPki
from tlsbench_testssl import (APP_FINDINGS, CLIENT_AUTH_NOT_APPLICABLE, HOSTNAME,
                              REQUIRED_HTTP_IDS, REQUIRED_IDS, farmgated_config, fmt, judge,
                              run_testssl_settled, start_backend, summary)


#: The four scans run two at a time (tests/run.py): a scan spends most of its minute waiting
#: on its own openssl processes and uses about 0.75 of a core here (67 s wall, 50 s CPU), so
#: two side by side take about as long as one and make test is two minutes shorter.
SIDE_BY_SIDE = 2


def _https_get(fg, pki, *args):
    """curl through the listener with the test root trusted: (status, headers lower-case)."""
    r = curl(["--cacert", pki.root, "--resolve", "%s:%d:127.0.0.1" % (HOSTNAME, fg.port),
              "-D", "-", "-o", "/dev/null"] + list(args) +
             ["https://%s:%d/" % (HOSTNAME, fg.port)], timeout=20)
    head = r.stdout.decode("latin-1")
    assert r.returncode == 0, "curl failed (%d): %s" % (r.returncode, r.stderr.decode()[-500:])
    m = re.match(r"HTTP/\S+ (\d+)", head)
    hdrs = {}
    for line in head.split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep:
            hdrs[k.strip().lower()] = v.strip()
    return int(m.group(1)) if m else 0, hdrs


def _scan(env, name, key_type, client_certificates):
    pki = OperatorPki(env.mkdtemp("pki"))
    # curl's certificate for a listener that requires one (testssl has none)
    client_cert = pki.client_cert("badge", "Jane Doe") if client_certificates == "Require" else None
    cert = pki.server_cert("www", [HOSTNAME], key_type=key_type)
    app = start_backend(env)
    fg = env.farmgated(farmgated_config(
        app.port, cert, client_certificates,
        client_ca=pki.ca_bundle if client_certificates != "Ignore" else None))

    # the set-up is what it claims: chain verifies, the request reaches the application,
    # which compresses (BREACH's precondition) and sends HSTS because the proxy said https
    extra = ["--cert", client_cert[0], "--key", client_cert[1]] if client_cert else []
    st, hdrs = _https_get(fg, pki, "-H", "Accept-Encoding: gzip", *extra)
    assert st == 200, "GET / through the HTTPS listener: %d %s" % (st, hdrs)
    assert hdrs.get("content-encoding") == "gzip", hdrs
    assert hdrs.get("strict-transport-security", "").startswith("max-age="), hdrs
    st, hdrs = _https_get(fg, pki, *extra)
    assert st == 200 and "content-encoding" not in hdrs, \
        "farmgated must not compress by itself (no Accept-Encoding): %s" % hdrs

    http = client_certificates != "Require"
    res = run_testssl_settled(env.path("testssl-" + name), HOSTNAME, fg.port, pki.root, name=name,
                              check_resumption=http)
    print("testssl against farmgated (%s, clientCertificates %s): %.0f s, exit %d\n%s"
          % (key_type, client_certificates, res.seconds, res.rc, summary(res)))
    fg.assert_alive()
    bad, hits = judge(res.findings, APP_FINDINGS,
                      REQUIRED_IDS + (REQUIRED_HTTP_IDS if http else ()),
                      None if http else CLIENT_AUTH_NOT_APPLICABLE)

    # what the contract promises, as testssl sees it (a few lines, all from the same run)
    def expect(fid, sev, rx):
        f = res.finding(fid)
        if not f or f.get("severity") not in sev or not re.search(rx, f.get("finding", "")):
            bad.append(dict(f or {"id": fid, "finding": "(none)"},
                            severity="EXPECTED %s /%s/, got %s" % ("|".join(sev), rx,
                                                                   f.get("severity", "-"))))
    expect("cert_chain_of_trust", ("OK",), r"^passed")
    expect("cert_trust", ("OK",), r"^Ok via SAN")
    expect("certs_countServer", ("INFO",), r"^2$")  # certificate + issuing CA sent
    for old in ("SSLv2", "SSLv3"):
        expect(old, ("OK",), r"^not offered")
    for old in ("TLS1", "TLS1_1"):
        expect(old, ("INFO", "OK"), r"^not offered")
    expect("TLS1_2", ("OK",), r"^offered")
    expect("TLS1_3", ("OK",), r"^offered")
    expect("PFS_ECDHE_curves", ("OK",), r"X25519")
    if http:
        for fid, got in sorted(res.resumption.items()):
            for what, result in got:
                if result != "Reused":
                    bad.append({"id": fid, "severity": "EXPECTED Reused",
                                "finding": "%s: %s" % (what, result)})
        expect("secure_client_renego", ("OK",), r"^not vulnerable")
        # HSTS is the application's, sent only when farmgated said X-Forwarded-Proto: https
        expect("HSTS_time", ("OK",), r"31536000")
        expect("ALPN", ("INFO",), r"http/1\.1")
    # (run.py shows a failure's last lines: the failing findings go last)
    assert not bad, (
        "testssl (%s, clientCertificates %s), all findings LOW and above:\n%s\n"
        "allowed application findings:\n  %s\nartifacts: %s, %s\n"
        "%d finding(s) that fail:\n  %s"
        % (key_type, client_certificates, summary(res),
           "\n  ".join(fmt(f) for f in hits) or "(none)", res.json_path, res.log_path,
           len(bad), "\n  ".join(fmt(f) for f in bad)))
    return res


@release_only
def test_testssl_rsa_ignore(env):
    """RSA-2048 certificate, clientCertificates Ignore (the usual HTTPS site)."""
    _scan(env, "rsa-ignore", "rsa2048", "Ignore")


@release_only
def test_testssl_p256_accept(env):
    """ECDSA P-256 certificate, clientCertificates Accept: every handshake carries a
    CertificateRequest with the accepted CA names; testssl has no client certificate and
    goes on without one, so the whole run, HTTP checks included, still applies."""
    _scan(env, "p256-accept", "p256", "Accept")


@release_only
def test_testssl_rsa_require(env):
    """RSA-2048, clientCertificates Require, a client without a certificate refused with a
    handshake alert (clientCertFailure Handshake, the default). testssl sees the
    CertificateRequest and the refusal, and runs everything that needs no application data:
    protocols, ciphers, preferences, certificate and chain, and the vulnerability probes on raw
    sockets (Heartbleed, CCS, Ticketbleed, ROBOT, ...), against a listener that refuses each
    of its hundreds of connections. The HTTP checks, client-initiated renegotiation and BREACH
    are not applicable (CLIENT_AUTH_NOT_APPLICABLE)."""
    _scan(env, "rsa-require", "rsa2048", "Require")


@release_only
def test_testssl_management_listener(env):
    """farmgate-mgmt's own HTTPS listener (the web UI and REST API), with an operator's P-256
    certificate from files (management.certificateFile / keyFile): the same verdict rules as the
    data plane's listeners. The UI answers / itself (no backend, nothing compressed), so BREACH
    must not show; the security headers (HSTS, nosniff) are its own."""
    pki = OperatorPki(env.mkdtemp("pki"))
    cert = pki.server_cert("mgmt", [HOSTNAME], key_type="p256")
    cfg = {"listeners": [{"address": "127.0.0.1", "port": None}], "webFarms": [], "rules": []}
    fg = env.farmgated(cfg)
    with open(fg.config_path) as f:
        full = json.load(f)
    full["management"] = {"address": "127.0.0.1", "port": free_port(),
                          "certificateFile": cert.chain, "keyFile": cert.key}
    with open(fg.config_path, "w") as f:
        json.dump(full, f)
    m = Mgmt(env, fg)
    m.start()
    res = run_testssl_settled(env.path("testssl-mgmt"), HOSTNAME, m.port, pki.root, name="mgmt")
    print("testssl against farmgate-mgmt (P-256): %.0f s, exit %d\n%s" % (res.seconds, res.rc, summary(res)))
    bad, hits = judge(res.findings, {}, REQUIRED_IDS + REQUIRED_HTTP_IDS)
    for fid, rx in (("cert_chain_of_trust", r"^passed"), ("TLS1_3", r"^offered"), ("TLS1_2", r"^offered"),
                    ("HSTS_time", r"\d"), ("secure_client_renego", r"^not vulnerable"),
                    ("BREACH", r"^not vulnerable")):
        f = res.finding(fid)
        if not f or not re.search(rx, f.get("finding", "")):
            bad.append(dict(f or {"id": fid, "finding": "(none)"}, severity="EXPECTED /%s/" % rx))
    assert not bad, ("testssl against the management listener:\n%s\nartifacts: %s, %s\n"
                     "%d finding(s) that fail:\n  %s"
                     % (summary(res), res.json_path, res.log_path, len(bad),
                        "\n  ".join(fmt(f) for f in bad)))
