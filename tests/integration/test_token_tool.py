"""farmgatectl token: slots, init, keygen, csr, import-cert, import-pfx, certs, delete and
selftest against a fresh SoftHSM token per test, checked with tools nobody here wrote:
pkcs11-tool (object attributes), openssl req/x509/pkcs12 (CSRs, thumbprints, PFX files).
PIN lockout flags come from the fault shim (tests/pkcs11-shim) in front of SoftHSM.

The test PKI is made here with the openssl CLI; nothing of it is committed."""

import os
import re
import subprocess

import harness
from harness import SanitizerError

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PKCS11_TOOL = "/usr/bin/pkcs11-tool"
OPENSSL = "/usr/bin/openssl"
SO_PIN = "12345678"
USER_PIN = "1234"
WRONG_PIN = "9999"
LRM = "\u200e"  # what Windows' certificate dialog puts in front of a copied thumbprint


class Result:
    def __init__(self, cmd, rc, out, err):
        self.cmd, self.rc, self.out, self.err = cmd, rc, out, err

    def __repr__(self):
        return "`%s` -> exit %s\nstdout:\n%s\nstderr:\n%s" % (" ".join(self.cmd), self.rc,
                                                              self.out, self.err)


class Token:
    """A SoftHSM token directory of its own (softhsm2.conf in the test's temp dir), a token
    `label` initialised through farmgatectl, and helpers to run farmgatectl, pkcs11-tool and
    openssl with SOFTHSM2_CONF pointing at it. PINs travel in the environment (FG_PIN...)."""

    def __init__(self, env, label="fgtest", init=True):
        self.env = env
        self.bin = os.path.join(os.path.dirname(env.farmgated_bin), "farmgatectl")
        assert os.access(self.bin, os.X_OK), "%s is missing (run make all)" % self.bin
        self.shim = os.path.join(env.build, "tests", "libfgshim.so")
        self.dir = env.mkdtemp("token")
        self.tokens = os.path.join(self.dir, "tokens")
        os.makedirs(self.tokens)
        conf = os.path.join(self.dir, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n" % self.tokens)
        self.penv = dict(env.proc_env)
        self.penv.update({"SOFTHSM2_CONF": conf, "FG_PIN": USER_PIN, "FG_SO_PIN": SO_PIN,
                          "FG_WRONG_PIN": WRONG_PIN})
        self.label = label
        if init:
            r = self.ctl("init", "--label", label, "--so-pin-env", "FG_SO_PIN", "--pin-env",
                         "FG_PIN", token=False, pin=False)
            assert r.rc == 0 and "initialised token %s" % label in r.out, r

    def path(self, name):
        return os.path.join(self.dir, name)

    def run(self, cmd, extra_env=None, timeout=120, input=None):
        env = dict(self.penv)
        env.update(extra_env or {})
        cmd = [str(c) for c in cmd]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout * self.env.slow,
                               env=env, cwd=self.dir, input=input)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not finish within %ss" % (cmd, timeout * self.env.slow))
        r = Result(cmd, p.returncode, p.stdout.decode("utf-8", "replace"),
                   p.stderr.decode("utf-8", "replace"))
        rep = harness.sanitizer_report(r.out + r.err)
        if rep:
            raise SanitizerError("sanitizer report from `%s`:\n%s" % (" ".join(cmd), rep))
        return r

    def ctl(self, *args, token=True, pin=True, module=None, extra_env=None):
        """farmgatectl token <args> [--token pkcs11:token=<label>] [--pin-env FG_PIN]."""
        cmd = [self.bin, "token"] + list(args)
        if module:
            cmd += ["--module", module]
        if token:
            cmd += ["--token", "pkcs11:token=" + self.label]
        if pin:
            cmd += ["--pin-env", "FG_PIN"]
        r = self.run(cmd, extra_env)
        if r.rc != 0:
            # the contract: one line on stderr starting "farmgatectl: "
            lines = r.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("farmgatectl: "), r
        return r

    def ok(self, *args, **kw):
        r = self.ctl(*args, **kw)
        assert r.rc == 0, r
        return r

    def openssl(self, *args, input=None):
        r = self.run([OPENSSL] + list(args), input=input)
        assert r.rc == 0, r
        return r

    def objects(self):
        """pkcs11-tool -O (logged in) as a list of (kind, {field: value})."""
        r = self.run([PKCS11_TOOL, "--module", SOFTHSM, "--token-label", self.label, "--login",
                      "--pin", USER_PIN, "-O"])
        assert r.rc == 0, r
        objs = []
        for line in r.out.splitlines():
            if not line.strip():
                continue
            if not line.startswith(" "):
                objs.append((line.split(";")[0].strip(), {}))
            elif objs and ":" in line:
                k, _, v = line.strip().partition(":")
                objs[-1][1][k.strip()] = v.strip()
        return objs

    def keys(self, kind="Private Key Object"):
        return {o["label"]: o for k, o in self.objects() if k == kind}

    # -- PKI ---------------------------------------------------------------
    def make_ca(self):
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                     "ca.crt", "-days", "3650", "-subj", "/CN=Farmgate Test CA")
        with open(self.path("ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = ca_default\n[ca_default]\ndir = %s\n"
                    "database = %s\nnew_certs_dir = %s\nserial = %s\ndefault_md = sha256\n"
                    "policy = policy_any\nunique_subject = no\ncopy_extensions = copy\n"
                    "preserve = yes\n[policy_any]\ncommonName = supplied\n"
                    "organizationName = optional\norganizationalUnitName = optional\n"
                    "countryName = optional\nemailAddress = optional\n"
                    % (self.dir, self.path("index.txt"), self.dir, self.path("serial")))
        open(self.path("index.txt"), "w").close()
        with open(self.path("serial"), "w") as f:
            f.write("1000\n")

    def issue(self, csr, crt, start=None, end=None):
        """Signs csr with the test CA (openssl ca), optionally with fixed dates (YYMMDDHHMMSSZ)."""
        args = ["ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
                "-in", csr, "-out", crt, "-notext"]
        args += ["-startdate", start] if start else []
        args += ["-enddate", end] if end else ["-days", "365"]
        self.openssl(*args)

    def fingerprints(self, crt):
        """(SHA-1, SHA-256) of a PEM certificate as openssl prints them, colons removed."""
        fp = []
        for alg in ("-sha1", "-sha256"):
            r = self.openssl("x509", "-in", crt, "-noout", "-fingerprint", alg)
            fp.append(r.out.strip().split("=", 1)[1].replace(":", "").upper())
        return tuple(fp)

    def keygen(self, typ, label, key_id=None):
        args = ["keygen", "--type", typ, "--label", label] + (["--id", key_id] if key_id else [])
        r = self.ok(*args)
        m = re.search(r"id=([0-9a-f]+) label=(\S+) type=(\S+)", r.out)
        assert m and m.group(2) == label and m.group(3) == typ, r
        return m.group(1)

    def client_cert(self, typ, label, subject, **dates):
        """A key on the token, its CSR by farmgatectl, signed by the CA: (key id, crt path)."""
        key_id = self.keygen(typ, label)
        self.ok("csr", "--key-label", label, "--subject", subject, "--out", label + ".csr")
        self.issue(label + ".csr", label + ".crt", **dates)
        return key_id, label + ".crt"


def _cert_blocks(out):
    """farmgatectl token certs output -> {label: {field: value}}."""
    certs, cur = {}, None
    for line in out.splitlines():
        if line.startswith("certificate "):
            cur = certs.setdefault(line[len("certificate "):].strip(), {})
        elif cur is not None and ":" in line:
            k, _, v = line.strip().partition(":")
            cur[k.strip()] = v.strip()
    return certs


def _assert_protected(key, generated):
    """pkcs11-tool's Access line: sensitive and not extractable (never extractable if made
    on the token)."""
    access = [a.strip() for a in key.get("Access", "").split(",")]
    assert "sensitive" in access, "key is not sensitive: %r" % key
    assert "extractable" not in access, "key is extractable: %r" % key
    if generated:
        assert "never extractable" in access and "always sensitive" in access, key


def _files_under(d, skip):
    out = set()
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if os.path.join(root, x) != skip]
        out.update(os.path.join(root, f) for f in files)
    return out


# --------------------------------------------------------------------------


def test_token_keygen_is_sensitive_and_never_extractable(env):
    tok = Token(env)
    r = tok.ok("slots", token=False, pin=False)
    assert re.search(r"token:\s+%s\n" % tok.label, r.out) and "model:" in r.out, r
    assert "user PIN set" in r.out and "PIN flags:    none" in r.out, r

    rsa_id = tok.keygen("rsa2048", "rsa-client")
    assert len(rsa_id) == 16, "a generated id is 8 random bytes: %s" % rsa_id
    ec_id = tok.keygen("ec256", "ec-client", key_id="0a:0B")
    assert ec_id == "0a0b"
    tok.keygen("ec384", "ec384-client")

    keys = tok.keys()
    assert set(keys) == {"rsa-client", "ec-client", "ec384-client"}, keys
    assert keys["rsa-client"]["ID"] == rsa_id and keys["ec-client"]["ID"] == "0a0b", keys
    for k in keys.values():
        _assert_protected(k, generated=True)
        assert "sign" in k.get("Usage", ""), k
    assert set(tok.keys("Public Key Object")) == set(keys)

    r = tok.ctl("keygen", "--type", "ec256", "--label", "ec-client")
    assert r.rc == 1 and "already exists" in r.err, r
    r = tok.ctl("keygen", "--type", "ec256", "--label", "other", "--id", "0a0b")
    assert r.rc == 1 and "id 0a0b already exists" in r.err, r
    r = tok.ctl("keygen", "--type", "rsa1024", "--label", "weak")
    assert r.rc == 2 and "rsa2048, rsa3072, ec256 or ec384" in r.err, r
    r = tok.ctl("keygen", "--type", "ec256", "--label", "nopin", pin=False)
    assert r.rc == 2 and "--pin-file" in r.err, r


def test_token_csr_import_cert_and_thumbprints(env):
    tok = Token(env)
    tok.make_ca()
    ec_id = tok.keygen("ec256", "ec-client")
    r = tok.ok("csr", "--key-label", "ec-client", "--subject", "/CN=Client-Cert-Mapping-IIS/O=Farmgate",
               "--san", "DNS:client.example,IP:10.1.2.3,email:ops@example.com", "--out", "ec.csr")
    assert "wrote ec.csr" in r.out, r
    v = tok.run([OPENSSL, "req", "-verify", "-in", "ec.csr", "-noout", "-subject", "-text"])
    assert v.rc == 0 and "verify OK" in (v.out + v.err), v
    assert "subject=CN = Client-Cert-Mapping-IIS, O = Farmgate" in v.out, v
    assert re.search(r"DNS:client\.example, IP Address:10\.1\.2\.3, email:ops@example\.com", v.out), v
    assert "ecdsa-with-SHA256" in v.out, v

    rsa_id = tok.keygen("rsa2048", "rsa-client")
    tok.ok("csr", "--id", rsa_id, "--subject", "/CN=rsa-client", "--out", "rsa.csr")
    v = tok.run([OPENSSL, "req", "-verify", "-in", "rsa.csr", "-noout", "-text"])
    assert v.rc == 0 and "verify OK" in (v.out + v.err) and "sha256WithRSAEncryption" in v.out, v

    tok.issue("ec.csr", "ec.crt")
    tok.issue("rsa.csr", "rsa.crt")
    tok.openssl("x509", "-in", "rsa.crt", "-outform", "DER", "-out", "rsa.der")
    r = tok.ok("import-cert", "ec.crt")
    ec_fp = tok.fingerprints(tok.path("ec.crt"))
    assert "SHA-1:   %s" % ec_fp[0] in r.out and "SHA-256: %s" % ec_fp[1] in r.out, r
    r = tok.ok("import-cert", "rsa.der", "--label", "rsa cert")
    rsa_fp = tok.fingerprints(tok.path("rsa.crt"))

    # the certificates sit beside their keys (same CKA_ID), as pkcs11-tool sees them
    certs = {o["label"]: o for k, o in tok.objects() if k == "Certificate Object"}
    assert certs["ec-client"]["ID"] == ec_id and certs["rsa cert"]["ID"] == rsa_id, certs

    r = tok.ok("certs")
    blocks = _cert_blocks(r.out)
    assert set(blocks) == {"ec-client", "rsa cert"}, r
    ec, rsa = blocks["ec-client"], blocks["rsa cert"]
    assert (ec["SHA-1"], ec["SHA-256"]) == ec_fp and (rsa["SHA-1"], rsa["SHA-256"]) == rsa_fp, r
    assert ec["subject"] == "CN = Client-Cert-Mapping-IIS, O = Farmgate", ec
    assert ec["issuer"] == "CN = Farmgate Test CA" and ec["id"] == ec_id, ec
    assert ec["key"].startswith("EC P-256") and rsa["key"] == "RSA 2048", blocks
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", ec["not after"]), ec
    for b in (ec, rsa):
        assert b["private key"].startswith("present") and "CKA_SENSITIVE=TRUE" in b["private key"] \
            and "CKA_EXTRACTABLE=FALSE" in b["private key"], b
    r = tok.ok("list", pin=False)  # certificates are public objects; keys need the PIN
    assert "private key: unknown (not logged in" in r.out and ec_fp[0] in r.out, r

    # the key signs and handshakes (TLS 1.2 and 1.3, RSA-PSS included) through the token
    r = tok.ok("selftest", "--thumbprint", LRM + " ".join(re.findall("..", rsa_fp[0].lower())))
    assert "RSA-PSS SHA-256" in r.out and re.search(r"TLS 1\.3 .* ok \(client signature RSASSA-PSS", r.out), r
    assert re.search(r"TLS 1\.2 .* ok", r.out), r
    r = tok.ok("selftest", "--thumbprint", ec_fp[1])
    assert re.search(r"TLS 1\.3 .* ok", r.out) and "ECDSA SHA-256" in r.out, r


def test_token_thumbprint_parsing_in_cli(env):
    tok = Token(env)
    tok.make_ca()
    _, crt = tok.client_cert("ec256", "web", "/CN=web")
    tok.ok("import-cert", crt)
    sha1, sha256 = tok.fingerprints(tok.path(crt))
    pairs = " ".join(re.findall("..", sha1.lower()))
    good = [sha1, sha1.lower(), pairs, ":".join(re.findall("..", sha1)), LRM + pairs,
            "  %s  " % pairs.upper(), sha256, ":".join(re.findall("..", sha256.lower()))]
    for t in good:
        r = tok.ctl("certs", "--thumbprint", t)
        assert r.rc == 0 and "certificate web" in r.out and sha1 in r.out, (t, r)
    bad = [(sha1[:-1], "39 hex digits"), (sha1 + "A", "41 hex digits"),
           (sha1[:-1] + "g", "'g' at position 40, which is not a hex digit"),
           (sha1.replace(sha1[2], "-", 1), "not a hex digit"),
           ("\u00e9" + sha1[1:], "non-ASCII"), ("", "0 hex digits")]
    for t, msg in bad:
        r = tok.ctl("certs", "--thumbprint", t)
        assert r.rc == 2 and "bad --thumbprint" in r.err and msg in r.err, (t, r)
    r = tok.ctl("certs", "--thumbprint", "00" * 20)
    assert r.rc == 1 and "no certificate with SHA-1 thumbprint %s on token %s" % ("00" * 20, tok.label) \
        in r.err, r


def test_token_import_cert_refusals(env):
    tok = Token(env)
    tok.make_ca()
    # a certificate whose key is not on the token
    tok.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "soft.key", "-out", "soft.csr", "-subj", "/CN=software")
    tok.issue("soft.csr", "soft.crt")
    tok.keygen("ec256", "unrelated")
    r = tok.ctl("import-cert", "soft.crt")
    sha1 = tok.fingerprints(tok.path("soft.crt"))[0]
    assert r.rc == 1 and "certificate %s matches no private key on token %s" % (sha1, tok.label) \
        in r.err, r

    # expired, and not yet valid: refused with the dates, unless asked
    _, old = tok.client_cert("ec256", "old", "/CN=old", start="200101000000Z", end="210101000000Z")
    r = tok.ctl("import-cert", old)
    assert r.rc == 1 and "certificate expired on 2021-01-01 00:00:00 UTC" in r.err \
        and "valid from 2020-01-01 00:00:00 UTC" in r.err and "--allow-invalid-dates" in r.err, r
    _, future = tok.client_cert("ec256", "future", "/CN=future", start="350101000000Z",
                                end="360101000000Z")
    r = tok.ctl("import-cert", future)
    assert r.rc == 1 and "not yet valid: valid from 2035-01-01 00:00:00 UTC" in r.err, r
    tok.ok("import-cert", old, "--allow-invalid-dates")
    r = tok.ok("certs")
    assert "(EXPIRED)" in _cert_blocks(r.out)["old"]["not after"], r
    r = tok.ctl("import-cert", old, "--allow-invalid-dates")
    assert r.rc == 1 and "is already on token" in r.err, r

    # unreadable, not a certificate, bad PEM
    r = tok.ctl("import-cert", "missing.crt")
    assert r.rc == 1 and "cannot read missing.crt: No such file or directory" in r.err, r
    with open(tok.path("junk.crt"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    r = tok.ctl("import-cert", "junk.crt")
    assert r.rc == 1 and "neither a PEM nor a DER X.509 certificate" in r.err, r
    r = tok.ctl("import-cert", "soft.key")
    assert r.rc == 1 and "neither a PEM nor a DER" in r.err, r
    r = tok.ctl("import-cert")
    assert r.rc == 2 and "needs a FILE" in r.err, r


def test_token_import_pfx(env):
    tok = Token(env)
    tok.make_ca()
    tok.openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "pfx.key", "-out", "pfx.csr",
                "-subj", "/CN=arr-client")
    tok.issue("pfx.csr", "pfx.crt")
    tok.openssl("pkcs12", "-export", "-inkey", "pfx.key", "-in", "pfx.crt", "-certfile", "ca.crt",
                "-name", "ARR client", "-out", "client.pfx", "-passout", "pass:Pfx-pass 1")
    # an EC one the way older Windows exports them (RC2/3DES: the legacy algorithms)
    tok.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout",
                "ec.key", "-out", "ec.csr", "-subj", "/CN=arr-ec")
    tok.issue("ec.csr", "ec.crt")
    tok.openssl("pkcs12", "-export", "-legacy", "-inkey", "ec.key", "-in", "ec.crt", "-out",
                "ec.pfx", "-passout", "pass:ec")
    pw = {"PFX_PW": "Pfx-pass 1", "PFX_BAD": "wrong", "PFX_EC": "ec"}
    before = _files_under(tok.dir, tok.tokens)

    r = tok.ctl("import-pfx", "client.pfx", "--password-env", "PFX_BAD", extra_env=pw)
    assert r.rc == 1 and "wrong PFX password for client.pfx" in r.err, r
    assert tok.keys() == {}, "nothing may be written after a wrong password"
    r = tok.ctl("import-pfx", "client.pfx", "--password-env", "PFX_PW", extra_env=pw)
    assert r.rc == 0, r
    fp = tok.fingerprints(tok.path("pfx.crt"))
    assert "SHA-1:   %s" % fp[0] in r.out and "SHA-256: %s" % fp[1] in r.out, r
    assert "1 CA certificate in the PFX was not stored" in r.out, r
    r = tok.ctl("import-pfx", "ec.pfx", "--password-env", "PFX_EC", "--label", "ec pfx",
                extra_env=pw)
    assert r.rc == 0, r

    keys = tok.keys()
    assert set(keys) == {"ARR client", "ec pfx"}, keys
    for k in keys.values():
        _assert_protected(k, generated=False)
    # farmgatectl left no file behind (the token directory aside)
    assert _files_under(tok.dir, tok.tokens) - before == set(), \
        _files_under(tok.dir, tok.tokens) - before

    blocks = _cert_blocks(tok.ok("certs").out)
    assert blocks["ARR client"]["SHA-1"] == fp[0], blocks
    assert "CKA_EXTRACTABLE=FALSE" in blocks["ec pfx"]["private key"], blocks
    r = tok.ok("selftest", "--thumbprint", fp[0])
    assert "RSA-PSS SHA-256" in r.out and re.search(r"TLS 1\.3 .* ok", r.out), r

    r = tok.ctl("import-pfx", "client.pfx", "--password-env", "PFX_PW", extra_env=pw)
    assert r.rc == 1 and "already on token" in r.err, r
    r = tok.ctl("import-pfx", "pfx.crt", "--password-env", "PFX_PW", extra_env=pw)
    assert r.rc == 1 and "not a PFX/PKCS#12 file" in r.err, r
    r = tok.ctl("import-pfx", "client.pfx")
    assert r.rc == 2 and "--password-env" in r.err, r


def test_token_pin_errors(env):
    tok = Token(env)
    r = tok.run([tok.bin, "token", "certs", "--token", "pkcs11:token=" + tok.label, "--pin-env",
                 "FG_WRONG_PIN"])
    assert r.rc == 1 and r.err.strip() == \
        "farmgatectl: wrong PIN for token %s (PIN count low)" % tok.label, r
    assert WRONG_PIN not in r.err

    pin_file = tok.path("pin")
    with open(pin_file, "w") as f:
        f.write(USER_PIN + "\n")
    os.chmod(pin_file, 0o644)
    r = tok.ctl("certs", "--pin-file", pin_file, pin=False)
    assert r.rc == 1 and "pin file %s has mode 0644" % pin_file in r.err and "refusing" in r.err, r
    os.chmod(pin_file, 0o600)
    if os.geteuid() == 0:
        os.chown(pin_file, 65534, -1)  # nobody
        r = tok.ctl("certs", "--pin-file", pin_file, pin=False)
        assert r.rc == 1 and "pin file %s is owned by uid 65534, not root" % pin_file in r.err, r
        os.chown(pin_file, 0, -1)
    os.symlink(pin_file, tok.path("pin-link"))
    r = tok.ctl("certs", "--pin-file", tok.path("pin-link"), pin=False)
    assert r.rc == 1 and "symbolic link" in r.err, r
    r = tok.ctl("keygen", "--type", "ec256", "--label", "k", "--pin-file", pin_file, pin=False)
    assert r.rc == 0, r

    # never from argv, never from a URI
    r = tok.run([tok.bin, "token", "certs", "--token", "pkcs11:token=" + tok.label, "--pin", USER_PIN])
    assert r.rc == 2 and "not taken from the command line" in r.err, r
    r = tok.run([tok.bin, "token", "certs", "--token",
                 "pkcs11:token=%s?pin-value=%s" % (tok.label, USER_PIN)])
    assert r.rc == 2 and "pin-value" in r.err and USER_PIN not in r.err, r


def test_token_pin_lockout_flags_through_shim(env):
    tok = Token(env)
    assert os.path.isfile(tok.shim), "%s is missing (run make unit)" % tok.shim
    shim_env = {"FGSHIM_MODULE": SOFTHSM, "FGSHIM_CONTROL": tok.path("shim.ctl")}
    with open(tok.path("shim.ctl"), "w") as f:
        f.write("pin_tries=3\n")

    def certs(pin_var):
        return tok.run([tok.bin, "token", "certs", "--module", tok.shim, "--token",
                        "pkcs11:token=" + tok.label, "--pin-env", pin_var], shim_env)

    expect = ["wrong PIN for token %s (PIN count low)" % tok.label,
              "wrong PIN for token %s (final PIN try)" % tok.label,
              "wrong PIN for token %s (PIN locked)" % tok.label,
              "PIN locked on token %s" % tok.label]
    for msg in expect:
        r = certs("FG_WRONG_PIN")
        assert r.rc == 1 and msg in r.err, (msg, r)
    r = certs("FG_PIN")  # a locked PIN stays locked, even the right one
    assert r.rc == 1 and "PIN locked on token" in r.err, r
    r = tok.run([tok.bin, "token", "slots", "--module", tok.shim], shim_env)
    assert r.rc == 0 and "PIN flags:    PIN locked" in r.out, r


def test_token_selection_delete_and_usage(env):
    tok = Token(env)
    tok.make_ca()
    key_id, crt = tok.client_cert("ec256", "web", "/CN=web")
    tok.ok("import-cert", crt)
    sha1 = tok.fingerprints(tok.path(crt))[0]

    r = tok.ctl("certs", "--token", "pkcs11:token=nope", token=False)
    assert r.rc == 1 and r.err.strip() == \
        "farmgatectl: no token matches pkcs11:token=nope (tokens present: %s)" % tok.label, r
    r = tok.ok("certs", token=False)  # the only token is the default
    assert sha1 in r.out, r
    tok.ok("init", "--label", "second", "--so-pin-env", "FG_SO_PIN", "--pin-env", "FG_PIN",
           token=False, pin=False)
    r = tok.ctl("init", "--label", "second", "--so-pin-env", "FG_SO_PIN", "--pin-env", "FG_PIN",
                token=False, pin=False)
    assert r.rc == 1 and "a token labelled second already exists" in r.err, r
    r = tok.ctl("certs", token=False)
    assert r.rc == 2 and ("several tokens present (%s, second)" % tok.label in r.err
                          or "several tokens present (second, %s)" % tok.label in r.err), r
    r = tok.ctl("certs", "--token", "pkcs11:token=%s;colour=red" % tok.label, token=False)
    assert r.rc == 2 and "unknown pkcs11 URI attribute 'colour'" in r.err, r

    # delete: the certificate only, then by thumbprint nothing is left, then the keys
    r = tok.ok("delete", "--id", key_id, "--type", "cert")
    assert "deleted 1 object" in r.out, r
    kinds = [k for k, _ in tok.objects()]
    assert "Certificate Object" not in kinds and "Private Key Object" in kinds, kinds
    r = tok.ctl("delete", "--thumbprint", sha1)
    assert r.rc == 1 and "no certificate with SHA-1 thumbprint" in r.err, r
    r = tok.ok("delete", "--label", "web")
    assert "deleted 2 objects" in r.out, r
    assert tok.objects() == [], tok.objects()
    r = tok.ctl("delete", "--label", "web")
    assert r.rc == 1 and "no object matches" in r.err, r

    # usage
    for args, msg in [(["frobnicate"], "unknown token command 'frobnicate'"),
                      (["certs", "--colour", "red"], "unknown option --colour"),
                      (["delete"], "delete needs"),
                      (["delete", "--id", "xyz"], "bad --id xyz"),
                      (["delete", "--label", "a", "--type", "key"], "bad --type key"),
                      (["csr", "--key-label", "a", "--out", "x.csr"], "--subject"),
                      (["csr", "--key-label", "a", "--subject", "CN=a", "--out", "x.csr"],
                       "bad --subject"),
                      (["slots", "--label", "x"], "does not apply to slots")]:
        r = tok.ctl(*args, token=False, pin=False)
        assert r.rc == 2 and msg in r.err, (args, r)
    r = tok.run([tok.bin, "bogus"])
    assert r.rc == 2 and r.err.startswith("farmgatectl: unknown command 'bogus'"), r
    r = tok.run([tok.bin, "token", "help"])
    assert r.rc == 0 and "import-pfx" in r.out, r
    r = tok.ctl("certs", module="/nonexistent/module.so")
    assert r.rc == 1 and "cannot load PKCS#11 module /nonexistent/module.so" in r.err, r
