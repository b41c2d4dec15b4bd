"""The emulated CAC card (tests/integration/cac.py: libcacard + tests/tools/cac_vpcd bridged to
pcscd's vpcd reader) as OpenSC's PKCS#11 module sees it: detection, signing with the PIN, a
wrong PIN, and an mTLS handshake by curl through the card. These are checks of the test
infrastructure itself (no farmgated), so they run once, against the release build."""

import hashlib
import os
import re
import subprocess
import time

import harness
from harness import release_only
from cac import EmulatedCac, client_env
from pki import Pki, pem_der, run

OPENSSL = "/usr/bin/openssl"
WRONG_PIN = "654321"


def _card(env):
    ca = Pki(env, "ca")
    return ca, EmulatedCac(env, ca, cn="cac-user")


@release_only
def test_cac_token_seen_by_opensc(env):
    ca, card = _card(env)
    assert "Common Access Card" in card.card_name, card.card_name
    rc, out = card.pkcs11_tool("-L")
    assert rc == 0, out
    assert re.search(r"token manufacturer\s*:\s*Common Access Card", out), out
    assert re.search(r"token label\s*:\s*cac-user", out), out
    # the certificate the card serves is the one issued for the key behind it
    der = os.path.join(card.dir, "read.der")
    rc, out = card.pkcs11_tool("--read-object", "--type", "cert", "--id", card.key_id, "-o", der)
    assert rc == 0, out
    with open(der, "rb") as f:
        got = f.read()
    assert got == pem_der(card.cert_path), "the card's certificate differs from %s" % card.cert_path
    assert hashlib.sha1(got).hexdigest().upper() == card.sha1
    rc, out = card.pkcs11_tool("-O", pin=card.pin)
    assert rc == 0, out
    assert re.search(r"Private Key Object; RSA", out) and "ID:         %s" % card.key_id in out, out


@release_only
def test_cac_signature_verifies_against_card_cert(env):
    ca, card = _card(env)
    msg, sig, pub = card.path("msg.txt"), card.path("msg.sig"), card.path("pub.pem")
    with open(msg, "wb") as f:
        f.write(b"hello card %d\n" % os.getpid())
    t0 = time.monotonic()
    rc, out = card.pkcs11_tool("--sign", "--id", card.key_id, "--mechanism", "SHA256-RSA-PKCS",
                               "-i", msg, "-o", sig, pin=card.pin)
    took = time.monotonic() - t0
    assert rc == 0, out
    assert os.path.getsize(sig) == 256, "RSA-2048 signature expected, got %d bytes" % os.path.getsize(sig)
    run([OPENSSL, "x509", "-in", card.cert_path, "-pubkey", "-noout", "-out", pub])
    rc, out = run([OPENSSL, "dgst", "-sha256", "-verify", pub, "-signature", sig, msg], check=False)
    assert rc == 0 and "Verified OK" in out, out
    # and the verification can fail: another message does not verify with that signature
    with open(msg, "ab") as f:
        f.write(b"tampered")
    rc, out = run([OPENSSL, "dgst", "-sha256", "-verify", pub, "-signature", sig, msg], check=False)
    assert rc != 0 and "Verification failure" in out, out
    assert took < 30, "one signature through the card took %.1fs" % took


@release_only
def test_cac_wrong_pin_refused(env):
    ca, card = _card(env)
    msg, sig = card.path("msg.txt"), card.path("bad.sig")
    with open(msg, "wb") as f:
        f.write(b"hello card\n")
    rc, out = card.pkcs11_tool("--sign", "--id", card.key_id, "--mechanism", "SHA256-RSA-PKCS",
                               "-i", msg, "-o", sig, pin=WRONG_PIN)
    assert rc != 0, "signing with a wrong PIN succeeded:\n" + out
    assert "C_Login failed" in out, out
    assert not os.path.exists(sig) or os.path.getsize(sig) == 0, "a signature was written"
    # the refusal was the PIN's: the right PIN still works afterwards
    rc, out = card.pkcs11_tool("--sign", "--id", card.key_id, "--mechanism", "SHA256-RSA-PKCS",
                               "-i", msg, "-o", card.path("good.sig"), pin=card.pin)
    assert rc == 0, out
    assert os.path.getsize(card.path("good.sig")) == 256


def _s_server(env, ca, crt, key):
    """openssl s_server -www requiring a client certificate issued by ca. Returns (port, proc)."""
    last = ""
    for _ in range(4):
        port = harness.free_port()
        log = open(env.path("s_server-%d.log" % port), "wb")
        proc = subprocess.Popen([OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", crt,
                                 "-key", key, "-CAfile", ca.crt, "-Verify", "1",
                                 "-verify_return_error", "-www", "-naccept", "100"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=client_env(), cwd=env.tmp)
        log.close()
        env.on_cleanup(lambda p=proc: harness._stop_popen(p, timeout=5))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if "ACCEPT" in harness._read_text(env.path("s_server-%d.log" % port)):
                return port, proc
            time.sleep(0.05)
        last = harness._read_text(env.path("s_server-%d.log" % port))
        harness._stop_popen(proc, timeout=5)
    raise AssertionError("openssl s_server did not start:\n" + last)


@release_only
def test_cac_curl_mtls_with_card(env):
    ca, card = _card(env)
    crt, key = ca.server_cert("localhost", ["DNS:localhost"])
    port, _ = _s_server(env, ca, crt, key)
    url = "https://localhost:%d/" % port

    # without the card the server refuses the handshake (it can fail)
    p = harness.curl(["--cacert", ca.crt, url], timeout=20)
    assert p.returncode != 0, "s_server accepted a client without a certificate"

    conf = card.engine_conf()
    t0 = time.monotonic()
    cmd = [harness.CURL, "-sS", "--noproxy", "*", "--max-time", "60", "--cacert", ca.crt,
           "--engine", "pkcs11", "--key-type", "ENG",
           "--key", "%s;pin-value=%s" % (card.key_uri, card.pin), "--cert", card.cert_path, url]
    p = subprocess.run(cmd, capture_output=True, timeout=80, env=client_env({"OPENSSL_CONF": conf}))
    took = time.monotonic() - t0
    body = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "curl failed (%d): %s" % (p.returncode, p.stderr.decode("utf-8", "replace"))
    with open(env.path("curl-body.html"), "w") as f:
        f.write(body)
    assert "Client certificate" in body, body[-3000:]
    m = re.search(r"Subject: (.*)", body[body.index("Client certificate"):])
    assert m and re.search(r"CN\s*=\s*cac-user\b", m.group(1)) and \
        re.search(r"O\s*=\s*Farmgate tests", m.group(1)), body[-3000:]
    assert took < 60, "mTLS through the card took %.1fs" % took

    # the same with a wrong PIN in the URI: no handshake
    cmd[cmd.index("--key") + 1] = "%s;pin-value=%s" % (card.key_uri, WRONG_PIN)
    p = subprocess.run(cmd, capture_output=True, timeout=80, env=client_env({"OPENSSL_CONF": conf}))
    assert p.returncode != 0, "curl with a wrong PIN got: %s" % p.stdout[:500]


def test_cac_badge_through_farmgated_require_listener(env):
    """The card as a badge at an HTTPS listener (clientCertificates Require): curl signs the
    handshake on the card (libp11's engine on OpenSC's opensc-pkcs11.so); the backend gets
    X-ARR-ClientCert = the card certificate's DER. Without the card, or with a wrong PIN, the
    handshake fails and nothing reaches the backend."""
    import base64
    from harness import make_config, parse_responses
    ca, card = _card(env)
    host = "fg.test"
    crt, key = ca.server_cert(host, ["DNS:" + host])
    os.chmod(key, 0o600)
    be = env.backend()
    cfg = make_config(
        listeners=[{"address": "127.0.0.1", "port": None,
                    "ssl": {"certificates": [{"certificateFile": crt, "keyFile": key}],
                            "clientCertificates": "Require", "clientCaFile": ca.crt}}],
        farms=[{"name": "web", "servers": [{"address": "127.0.0.1", "httpPort": be.port}],
                "protocol": {"clientCertRfc9440": True}}],
        rules=[{"name": "all", "patternSyntax": "Wildcard", "stopProcessing": True,
                "match": {"url": "*"}, "action": {"type": "Rewrite", "url": "http://web/{R:0}"}}])
    fg = env.farmgated(cfg)
    url = "https://%s:%d/badge?x=1" % (host, fg.port)
    base = [harness.CURL, "-sS", "-i", "--noproxy", "*", "--max-time", "60",
            "--resolve", "%s:%d:127.0.0.1" % (host, fg.port), "--cacert", ca.crt]

    # without the card: refused during the handshake (it can fail)
    p = subprocess.run(base + [url], capture_output=True, timeout=80, env=client_env())
    # (whether curl reads the alert is test_front_tls.test_require_handshake_refuses's business)
    assert p.returncode != 0 and b"HTTP/1.1" not in p.stdout, \
        "no client certificate at a Require listener: exit %d %r %r" % (
            p.returncode, p.stdout[:300], p.stderr[:300])
    assert be.count == 0, "a client without a certificate reached the backend"

    conf = card.engine_conf()
    card_args = ["--engine", "pkcs11", "--key-type", "ENG",
                 "--key", "%s;pin-value=%s" % (card.key_uri, card.pin), "--cert", card.cert_path]
    t0 = time.monotonic()
    p = subprocess.run(base + card_args + [url], capture_output=True, timeout=80,
                       env=client_env({"OPENSSL_CONF": conf}))
    took = time.monotonic() - t0
    rs = parse_responses(p.stdout)
    assert p.returncode == 0 and rs and rs[-1].status == 200, \
        "curl through the card to farmgated: exit %d %r %r\n%s" % (
            p.returncode, p.stdout[:500], p.stderr[-800:], env.log_tails())
    assert be.count == 1 and be.requests[0].target == "/badge?x=1", be.requests
    q = be.requests[0]
    want = base64.b64encode(pem_der(card.cert_path)).decode()
    assert q.header_all("X-ARR-ClientCert") == [want], \
        "X-ARR-ClientCert must be the card certificate's DER (SHA-1 %s):\n%r" % (card.sha1, q.head[:3000])
    assert q.header_all("Client-Cert") == [":%s:" % want], q.head[:3000]
    assert q.header("X-Forwarded-Proto") == "https", q.head[:3000]
    assert took < 60, "mTLS through the card took %.1fs" % took

    # a wrong PIN: no signature, no handshake, nothing at the backend
    bad = list(card_args)
    bad[bad.index("--key") + 1] = "%s;pin-value=%s" % (card.key_uri, WRONG_PIN)
    p = subprocess.run(base + bad + [url], capture_output=True, timeout=80,
                       env=client_env({"OPENSSL_CONF": conf}))
    assert p.returncode != 0 and b"HTTP/1.1 200" not in p.stdout, \
        "curl with a wrong card PIN got: %r" % p.stdout[:500]
    assert be.count == 1, "a client that could not sign reached the backend: %r" % be.requests[1:]
