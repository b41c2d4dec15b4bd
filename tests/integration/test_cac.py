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
