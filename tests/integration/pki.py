"""Test PKI, SoftHSM tokens and TLS nginx backends for integration tests (stdlib only).

Everything is made in the test's temp dir with tools nobody here wrote (openssl CLI,
softhsm2, pkcs11-tool, nginx); farmgatectl is used only for what it is under test for
(init, keygen, csr, import-cert, import-pfx).

    ca = Pki(env, "ca")                                 # a CA (RSA 2048, openssl req -x509)
    crt, key = ca.server_cert("be", ["DNS:app.internal"])
    tok = SoftToken(env)                                # fresh token dir, SOFTHSM2_CONF exported
    cert = tok.client_cert(ca, "ec256", "appliance")    # key made on the token, CSR signed by ca
    cert.sha1, cert.sha256                              # thumbprints (upper-case hex)
    ng = TlsNginx(env, crt, key, client_ca=ca.crt, users={cert.sha1: "alice"}).start()
    cfg["tokens"] = [tok.token_cfg()]
"""

import base64
import hashlib
import os
import re
import subprocess
import time

import harness
from harness import NginxBackend, SanitizerError

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
OPENSSL = "/usr/bin/openssl"
PKCS11_TOOL = "/usr/bin/pkcs11-tool"
SO_PIN = "12345678"
USER_PIN = "1234"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def client_env(extra=None):
    """No proxies, no SOFTHSM2_CONF / OPENSSL_CONF of the test process."""
    e = harness._clean_env(extra)
    for k in ("SOFTHSM2_CONF", "OPENSSL_CONF"):
        if not extra or k not in extra:
            e.pop(k, None)
    return e


def s_client(port, args=(), name=None, request=None, timeout=20, env=None):
    """openssl s_client -connect 127.0.0.1:<port> [-servername name | -noservername] args.
    request (bytes): sent after the handshake (-ign_eof: waits until the server closes).
    Returns (returncode, stdout + stderr text)."""
    cmd = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port]
    cmd += ["-servername", name] if name else ["-noservername"]
    cmd += [str(a) for a in args]
    if request is not None:
        cmd.append("-ign_eof")
    try:
        p = subprocess.run(cmd, input=request or b"", capture_output=True, timeout=timeout,
                           env=env or client_env())
    except subprocess.TimeoutExpired:
        raise AssertionError("openssl s_client did not finish within %ss: %s" % (timeout, " ".join(cmd)))
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def run(cmd, env=None, cwd=None, timeout=60, check=True):
    """Runs cmd; returns (rc, stdout+stderr text). check: assert rc == 0. Fails on a
    sanitizer report (farmgatectl from the ASan build)."""
    cmd = [str(c) for c in cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise AssertionError("`%s` did not finish within %ss" % (" ".join(cmd), timeout))
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    rep = harness.sanitizer_report(out)
    if rep:
        raise SanitizerError("sanitizer report from `%s`:\n%s" % (" ".join(cmd), rep))
    if check:
        assert p.returncode == 0, "`%s` failed with exit %d:\n%s" % (" ".join(cmd), p.returncode, out)
    return p.returncode, out


def pem_der(path):
    """DER bytes of the first PEM certificate in path."""
    with open(path) as f:
        text = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    assert m, "no PEM certificate in %s" % path
    return base64.b64decode("".join(m.group(1).split()))


def sha1_hex(path):
    return hashlib.sha1(pem_der(path)).hexdigest().upper()


def sha256_hex(path):
    return hashlib.sha256(pem_der(path)).hexdigest().upper()


def windows_thumbprint(hexstr):
    """As the Windows certificate dialog shows it: lower case, bytes separated by spaces."""
    h = hexstr.lower()
    return " ".join(h[i:i + 2] for i in range(0, len(h), 2))


class Cert:
    """A certificate file with its thumbprints (upper-case hex) and the token key id."""

    def __init__(self, path, key_id=None, label=None):
        self.path = path
        self.key_id = key_id
        self.label = label
        self.sha1 = sha1_hex(path)
        self.sha256 = sha256_hex(path)

    @property
    def nginx_fingerprint(self):
        """nginx's $ssl_client_fingerprint: SHA-1, lower case, no colons."""
        return self.sha1.lower()


class Pki:
    """A test CA in <tmp>/<name>/ (RSA 2048, openssl req -x509) issuing server and client
    certificates with openssl x509 -req."""

    def __init__(self, env, name="ca", cn=None, parent=None):
        self.env = env
        self.name = name
        self.dir = env.mkdtemp(name)
        self.crt = os.path.join(self.dir, "ca.crt")
        self.key = os.path.join(self.dir, "ca.key")
        self.cn = cn or "Farmgate test " + name
        self.parent = parent
        self._serial = 0x1000 + (os.getpid() & 0xffff) * 0x100
        if parent is None:
            self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                         "-out", self.crt, "-days", "30", "-subj", "/CN=%s" % self.cn,
                         "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        else:
            # an intermediate CA: key and CSR here, certificate from parent
            csr = self.path("ca.csr")
            self.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                         "-out", csr, "-subj", "/CN=%s" % self.cn)
            parent._serial += 1
            extfile = parent._ext("sub-" + name, [
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid"])
            parent.openssl("x509", "-req", "-in", csr, "-CA", parent.crt, "-CAkey", parent.key,
                           "-set_serial", str(parent._serial), "-days", "30", "-sha256",
                           "-out", self.crt, "-extfile", extfile)
            with open(self.path("chain.pem"), "w") as f:  # intermediate then root
                f.write(open(self.crt).read() + open(parent.crt).read())

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        return run([OPENSSL] + list(args), env=harness._clean_env(), cwd=self.dir)[1]

    def _ext(self, name, lines):
        p = self.path(name + ".ext")
        with open(p, "w") as f:
            f.write("\n".join(lines) + "\n")
        return p

    def sign_csr(self, csr, out, san=None, usage="clientAuth", days=30, backdate=0):
        """Issues a certificate for csr (a PEM CSR file) into out; returns out. backdate:
        seconds its validity starts before now (as public CAs do, for clients whose clock
        is a little behind: an appliance that just booted)."""
        self._serial += 1
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage=%s" % usage, "subjectKeyIdentifier=hash",
               "authorityKeyIdentifier=keyid"]
        if san:
            ext.append("subjectAltName=" + ",".join(san))
        extfile = self._ext(os.path.basename(out), ext)
        if backdate:
            conf = self._ca_conf()
            with open(self.path("serial"), "w") as f:  # openssl ca takes the serial from here
                f.write("%08X\n" % self._serial)
            now = time.time()
            fmt = "%Y%m%d%H%M%SZ"
            self.openssl("ca", "-config", conf, "-batch", "-notext", "-in", csr, "-out", out,
                         "-startdate", time.strftime(fmt, time.gmtime(now - backdate)),
                         "-enddate", time.strftime(fmt, time.gmtime(now + days * 86400)),
                         "-extfile", extfile)
            return out
        self.openssl("x509", "-req", "-in", csr, "-CA", self.crt, "-CAkey", self.key, "-set_serial",
                     str(self._serial), "-days", str(days), "-sha256", "-out", out, "-extfile", extfile)
        return out

    def server_cert(self, name, san, key_type="ec"):
        """A server certificate (software key, for nginx) with subjectAltName san (a list like
        ["DNS:x"]). Returns (crt, key) paths."""
        key, csr, crt = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".crt")
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec" \
            else ["-newkey", "rsa:2048"]
        self.openssl("req", "-new", *newkey, "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
        self.sign_csr(csr, crt, san=san, usage="serverAuth")
        return crt, key

    def software_client(self, name, cn, subject=None, key_type="rsa"):
        """A client certificate with a SOFTWARE key (for PFX import). subject (e.g.
        "/O=Example/CN=alice") replaces /CN=<cn>; key_type "rsa" (2048) or "ec" (P-256).
        Returns (crt, key)."""
        key, csr, crt = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".crt")
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec" \
            else ["-newkey", "rsa:2048"]
        self.openssl("req", "-new", *newkey, "-nodes", "-keyout", key, "-out", csr,
                     "-subj", subject or "/CN=" + cn)
        self.sign_csr(csr, crt, usage="clientAuth")
        return crt, key

    # -- openssl ca: back-dated certificates, revocation, CRLs ------------------
    def _ca_conf(self):
        """<dir>/ca.cnf for `openssl ca` (database index.txt, crlnumber), made once."""
        conf = self.path("ca.cnf")
        if os.path.exists(conf):
            return conf
        for n, text in (("index.txt", ""), ("index.txt.attr", "unique_subject = no\n"),
                        ("crlnumber", "1000\n")):
            with open(self.path(n), "w") as f:
                f.write(text)
        os.makedirs(self.path("newcerts"), exist_ok=True)
        with open(conf, "w") as f:
            f.write("[ca]\ndefault_ca = CA_default\n[CA_default]\ndir = %s\n"
                    "database = $dir/index.txt\nnew_certs_dir = $dir/newcerts\n"
                    "certificate = %s\nprivate_key = %s\ncrlnumber = $dir/crlnumber\n"
                    "serial = $dir/serial\n"
                    "default_md = sha256\ndefault_days = 30\ndefault_crl_days = 30\n"
                    "policy = policy_any\nunique_subject = no\ncopy_extensions = none\n"
                    "crl_extensions = crl_ext\n[policy_any]\ncommonName = supplied\n"
                    "organizationName = optional\ncountryName = optional\n"
                    "[crl_ext]\nauthorityKeyIdentifier = keyid:always\n"
                    % (self.dir, self.crt, self.key))
        return conf

    def expired_client(self, name, cn, start="20200101000000Z", end="20200201000000Z"):
        """A client certificate (software RSA key) valid only from start to end (long past by
        default), issued with openssl ca. Returns (crt, key)."""
        conf = self._ca_conf()
        key, csr, crt = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".crt")
        self.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                     "-subj", "/CN=" + cn)
        self._serial += 1
        with open(self.path("serial"), "w") as f:  # openssl ca takes the serial from here
            f.write("%08X\n" % self._serial)
        extfile = self._ext(name, ["basicConstraints=critical,CA:FALSE",
                                   "keyUsage=critical,digitalSignature,keyEncipherment",
                                   "extendedKeyUsage=clientAuth", "authorityKeyIdentifier=keyid"])
        self.openssl("ca", "-config", conf, "-batch", "-notext", "-in", csr, "-out", crt,
                     "-startdate", start, "-enddate", end, "-extfile", extfile)
        return crt, key

    def crl(self, revoked=(), name="ca.crl", der=False, last_update=None, next_update=None,
            days=30):
        """A CRL signed by this CA revoking the certificates in revoked (PEM paths issued by
        this CA). der: write DER instead of PEM. last_update / next_update (YYYYMMDDHHMMSSZ)
        back-date it (an expired CRL: both in the past). The index starts empty for each
        call, so only `revoked` is listed. Returns the CRL's path."""
        conf = self._ca_conf()
        with open(self.path("index.txt"), "w") as f:
            f.write("")
        for crt in revoked:
            self.openssl("ca", "-config", conf, "-revoke", crt, "-crl_reason", "keyCompromise")
        out = self.path(name)
        pem = out + ".pem" if der else out
        args = ["ca", "-config", conf, "-gencrl", "-out", pem]
        if last_update:
            args += ["-crl_lastupdate", last_update]
        if next_update:
            args += ["-crl_nextupdate", next_update]
        else:
            args += ["-crldays", str(days)]
        self.openssl(*args)
        if der:
            self.openssl("crl", "-in", pem, "-outform", "DER", "-out", out)
        return out

    def serial_hex(self, crt):
        """The certificate's serial number as openssl prints it (upper-case hex)."""
        return self.openssl("x509", "-in", crt, "-noout", "-serial").strip().split("=", 1)[1]


def self_signed(env, name, san):
    """A self-signed server certificate (EC P-256). Returns (crt, key)."""
    d = env.mkdtemp(name)
    crt, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=" + name,
         "-addext", "subjectAltName=" + ",".join(san)], env=harness._clean_env(), cwd=d)
    return crt, key


def shim_path(env):
    """build/tests/libfgshim.so of the build under test (the release one as a fallback)."""
    for p in (os.path.join(env.build, "tests", "libfgshim.so"),
              os.path.join(REPO, "build", "tests", "libfgshim.so")):
        if os.path.isfile(p):
            return p
    raise AssertionError("libfgshim.so is missing (run make unit)")


class SoftToken:
    """A fresh SoftHSM token in its own directory inside the test's temp dir, initialised by
    farmgatectl. SOFTHSM2_CONF is exported into env.proc_env (farmgated sees it).

      .ctl(*args)          farmgatectl token <args> --module M --token pkcs11:token=L --pin-env
      .client_cert(ca, key_type, cn)  key pair on the token + CSR + certificate imported
      .pin_file            <dir>/user.pin, root-owned, mode 0600
      .token_cfg(...)      a tokens[] entry for farmgated
      .use_shim(stats=True) farmgated loads the fault shim; returns its control helpers
    """

    def __init__(self, env, label="farmgate", user_pin=USER_PIN, so_pin=SO_PIN, export=True):
        self.env = env
        self.label = label
        self.user_pin = user_pin
        self.ctl_bin = os.path.join(os.path.dirname(env.farmgated_bin), "farmgatectl")
        assert os.access(self.ctl_bin, os.X_OK), "%s is missing (run make all)" % self.ctl_bin
        self.dir = env.mkdtemp("token")
        os.chmod(self.dir, 0o700)  # farmgated runs as root; nobody else needs the token
        tokens = os.path.join(self.dir, "tokens")
        os.makedirs(tokens, mode=0o700)
        self.conf = os.path.join(self.dir, "softhsm2.conf")
        with open(self.conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n" % tokens)
        if export:  # a client-side token (export=False) stays out of farmgated's environment
            env.proc_env["SOFTHSM2_CONF"] = self.conf
        self.penv = dict(env.proc_env)
        self.penv["SOFTHSM2_CONF"] = self.conf
        self.penv.update({"FG_PIN": user_pin, "FG_SO_PIN": so_pin})
        self.module = SOFTHSM
        self.shim = None
        self.control = None
        self.stats_pattern = None
        rc, out = run([self.ctl_bin, "token", "init", "--module", SOFTHSM, "--label", label,
                       "--so-pin-env", "FG_SO_PIN", "--pin-env", "FG_PIN"], env=self.penv, cwd=self.dir)
        assert "initialised token %s" % label in out, out
        self.pin_file = self.write_pin(user_pin, "user.pin")

    def path(self, name):
        return os.path.join(self.dir, name)

    def write_pin(self, pin, name, mode=0o600):
        p = self.path(name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pin + "\n")
        os.chown(p, 0, 0)
        os.chmod(p, mode)
        return p

    def ctl(self, *args, extra_env=None, check=True):
        env = dict(self.penv)
        env.update(extra_env or {})
        return run([self.ctl_bin, "token"] + list(args) +
                   ["--module", SOFTHSM, "--token", "pkcs11:token=" + self.label, "--pin-env", "FG_PIN"],
                   env=env, cwd=self.dir, timeout=120, check=check)[1]

    def client_cert(self, ca, key_type="rsa2048", cn="appliance", label=None):
        """Generates a key pair on the token (farmgatectl keygen), writes a CSR signed by it
        (farmgatectl csr), has ca issue the certificate and imports it beside the key.
        Returns a Cert."""
        label = label or cn
        out = self.ctl("keygen", "--type", key_type, "--label", label)
        m = re.search(r"id=([0-9a-fA-F]+)", out)
        assert m, "farmgatectl keygen printed no id:\n" + out
        csr = self.path(label + ".csr")
        self.ctl("csr", "--key-label", label, "--subject", "/CN=%s/O=Farmgate tests" % cn, "--out", csr)
        crt = ca.sign_csr(csr, self.path(label + ".crt"), usage="clientAuth")
        self.ctl("import-cert", crt, "--label", label)
        return Cert(crt, key_id=m.group(1).lower(), label=label)

    def server_cert(self, ca, key_type="ec256", cn="server", san=None, label=None):
        """Like client_cert but a TLS server certificate (serverAuth, subjectAltName san, a
        list like ["DNS:a.test"]; default DNS:<cn>). Returns a Cert."""
        label = label or cn
        out = self.ctl("keygen", "--type", key_type, "--label", label)
        m = re.search(r"id=([0-9a-fA-F]+)", out)
        assert m, "farmgatectl keygen printed no id:\n" + out
        csr = self.path(label + ".csr")
        self.ctl("csr", "--key-label", label, "--subject", "/CN=%s" % cn, "--out", csr)
        crt = ca.sign_csr(csr, self.path(label + ".crt"), san=san or ["DNS:" + cn],
                          usage="serverAuth")
        self.ctl("import-cert", crt, "--label", label)
        return Cert(crt, key_id=m.group(1).lower(), label=label)

    def key_uri(self, label, pin=True):
        """RFC 7512 URI of the private key labelled label (with pin-value when pin)."""
        uri = "pkcs11:token=%s;object=%s;type=private" % (self.label, label)
        return uri + (";pin-value=%s" % self.user_pin if pin else "")

    def engine_conf(self, name="openssl-pkcs11.cnf"):
        """An OPENSSL_CONF for a client process (curl, openssl s_client): libp11's pkcs11
        engine with MODULE_PATH = SoftHSM. Use with client_env()."""
        return engine_conf(self.path(name), SOFTHSM)

    def client_env(self, extra=None):
        """Environment for a client using this token through the engine: no proxies, this
        token's SOFTHSM2_CONF, OPENSSL_CONF = engine_conf()."""
        e = harness._clean_env({"SOFTHSM2_CONF": self.conf, "OPENSSL_CONF": self.engine_conf()})
        e.update(extra or {})
        return e

    def objects(self):
        """pkcs11-tool -O --login on SoftHSM directly: ([(kind, {field: value})], stdout)."""
        cmd = [PKCS11_TOOL, "--module", SOFTHSM, "--token-label", self.label, "--login", "--pin",
               self.user_pin, "-O"]
        p = subprocess.run(cmd, capture_output=True, timeout=60, env=self.penv, cwd=self.dir)
        out = p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, "%s failed:\n%s%s" % (cmd, out, p.stderr.decode("utf-8", "replace"))
        objs = []
        for line in out.splitlines():
            if not line.strip():
                continue
            if not line.startswith(" "):
                objs.append((line.split(";")[0].strip(), {}))
            elif objs and ":" in line:
                k, _, v = line.strip().partition(":")
                objs[-1][1][k.strip()] = v.strip()
        return objs, out

    def private_key_access(self, key_id=None, label=None):
        """The set of words of pkcs11-tool's "Access:" line for the private key with CKA_ID
        key_id (hex) or CKA_LABEL label, e.g. {"sensitive", "always sensitive",
        "never extractable", "local"}; an extractable key shows "extractable". Returns
        (set, listing)."""
        objs, out = self.objects()
        found = [o for kind, o in objs if kind == "Private Key Object" and
                 ((key_id and o.get("ID", "").lower() == key_id.lower()) or
                  (label and o.get("label") == label))]
        assert len(found) == 1, "expected one private key (id %s, label %s) on the token:\n%s" % (
            key_id, label, out)
        return {w.strip() for w in found[0].get("Access", "").split(",") if w.strip()}, out

    # -- the fault shim in front of SoftHSM --------------------------------
    def use_shim(self):
        """From now on token_cfg() names the shim (wrapping SoftHSM); farmgated gets
        FGSHIM_MODULE, FGSHIM_CONTROL and FGSHIM_STATS (one stats file per pid)."""
        self.shim = shim_path(self.env)
        self.module = self.shim
        self.control = self.path("shim.ctl")
        self.stats_pattern = self.path("shim.stats.%p")
        self.env.proc_env.update({"FGSHIM_MODULE": SOFTHSM, "FGSHIM_CONTROL": self.control,
                                  "FGSHIM_STATS": self.stats_pattern})
        self.set_control("")
        return self

    def set_control(self, text):
        tmp = self.control + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.control)

    def settled_stats(self, pid, quiet=0.4, timeout=5.0):
        """The shim's stats once the file has not changed for `quiet` seconds (it is written at
        most every 100 ms while counters change)."""
        deadline = time.monotonic() + timeout
        last, since = self.stats(pid), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            st = self.stats(pid)
            if st != last:
                last, since = st, time.monotonic()
            elif time.monotonic() - since >= quiet and st:
                return st
        return last

    def stats(self, pid):
        """The shim's counters in farmgated pid ({} before the first write)."""
        out = {}
        try:
            with open(self.stats_pattern.replace("%p", str(pid))) as f:
                for line in f:
                    k, sep, v = line.strip().partition("=")
                    if sep:
                        out[k] = int(v)
        except (OSError, ValueError):
            return {}
        return out

    def pin_failures(self):
        """The shim's persistent PIN failure counter (0 when never failed)."""
        try:
            with open(self.control + ".state") as f:
                m = re.search(r"pin_failures=(\d+)", f.read())
                return int(m.group(1)) if m else 0
        except OSError:
            return 0

    def token_cfg(self, name="token1", pin_file=None):
        return {"name": name, "module": self.module, "uri": "pkcs11:token=" + self.label,
                "pinFile": pin_file or self.pin_file}


PKCS11_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"


def engine_conf(path, module):
    """Writes an OPENSSL_CONF at path loading libp11's pkcs11 engine on module; returns path.
    Only for client processes: with it, software CA work in the same process fails
    (PLATFORM-NOTES section 1, caveat 1)."""
    with open(path, "w") as f:
        f.write("openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
                "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\n"
                "engine_id = pkcs11\ndynamic_path = %s\nMODULE_PATH = %s\ninit = 0\n"
                % (PKCS11_ENGINE, module))
    return path


class TlsNginx(NginxBackend):
    """Debian's nginx serving TLS on 127.0.0.1:<free port> (harness.NginxBackend's process
    handling, its own nginx.conf). Every request gets 200 text/plain

        user=$user sni=$ssl_server_name host=$host rawhost=$http_host proto=$ssl_protocol
        reused=$ssl_session_reused conn=$connection uri=$request_uri

    where $user maps $ssl_client_fingerprint through users ({SHA-1 hex: name}; "-" when
    unknown or no certificate).

      client_ca        ssl_client_certificate + ssl_verify_client on (None: no client auth)
      protocols        ssl_protocols
      session_cache    False: ssl_session_cache off (no resumption by session id)
      tickets          False: ssl_session_tickets off
      keepalive_timeout  "0": one request per connection
    """

    def __init__(self, env, cert, key, client_ca=None, users=None, name="tls",
                 protocols="TLSv1.2 TLSv1.3", session_cache=True, tickets=True,
                 keepalive_timeout="75s", keepalive_requests=100000, worker_connections=1024):
        super().__init__(env, mode="custom", name=name, server_body="",
                         keepalive_requests=keepalive_requests, keepalive_timeout=keepalive_timeout)
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.users = dict(users or {})
        self.protocols = protocols
        self.session_cache = session_cache
        self.tickets = tickets
        self.worker_connections = worker_connections

    def _write_conf(self):
        p = self.prefix
        users = "".join("    %s %s;\n" % (fp.lower().replace(":", ""), u) for fp, u in self.users.items())
        client = ("ssl_verify_client on;\n    ssl_client_certificate %s;\n    ssl_verify_depth 2;"
                  % self.client_ca) if self.client_ca else ""
        cache = "shared:fgtls%d:1m" % self.port if self.session_cache else "off"
        conf = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
user nobody nogroup;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections {wc}; }}
http {{
  log_format fg '$remote_addr:$remote_port conn=$connection reqs=$connection_requests "$request" $status ssl=$ssl_protocol reused=$ssl_session_reused fp=$ssl_client_fingerprint sni=$ssl_server_name';
  access_log {p}/access.log fg;
  client_body_temp_path {p}/client_body_temp;
  proxy_temp_path {p}/proxy_temp;
  fastcgi_temp_path {p}/fastcgi_temp;
  uwsgi_temp_path {p}/uwsgi_temp;
  scgi_temp_path {p}/scgi_temp;
  keepalive_requests {kr};
  keepalive_timeout {kt};
  map $ssl_client_fingerprint $user {{
    default "-";
{users}  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name _;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols {protocols};
    ssl_session_cache {cache};
    ssl_session_timeout 10m;
    ssl_session_tickets {tickets};
    {client}
    location / {{
      default_type text/plain;
      return 200 "user=$user sni=$ssl_server_name host=$host rawhost=$http_host proto=$ssl_protocol reused=$ssl_session_reused conn=$connection uri=$request_uri\\n";
    }}
  }}
}}
""".format(p=p, wc=self.worker_connections, nofile=2 * self.worker_connections + 64,
           port=self.port, kr=self.keepalive_requests, kt=self.keepalive_timeout, users=users,
           cert=self.cert, key=self.key, protocols=self.protocols, cache=cache,
           tickets="on" if self.tickets else "off", client=client)
        path = os.path.join(p, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path


def parse_echo(body):
    """TlsNginx's response body as a dict."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))
