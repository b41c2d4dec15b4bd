"""An emulated CAC smart card for integration tests (stdlib only).

    ca = Pki(env, "ca")
    card = EmulatedCac(env, ca, cn="cac-user")    # ready: OpenSC sees a CAC card
    card.module      # /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    card.pin         # the card's PIN
    card.cert_path   # the card's certificate (PEM), issued by ca
    card.sha1        # its SHA-1 thumbprint (upper-case hex)
    card.key_uri     # "pkcs11:id=%00%01;type=private" (OpenSC shows the CAC ID key as 0001)
    card.engine_conf()   # an OPENSSL_CONF file: libp11's pkcs11 engine on opensc-pkcs11.so
    card.stop()      # also done at env.close()

How it is built (see PLATFORM-NOTES.md section 2):
* a SoftHSM token of its own (own SOFTHSM2_CONF, slots.removable = true) holding an RSA-2048
  key made on the token by farmgatectl keygen, a certificate for it issued by the caller's CA
  from a farmgatectl CSR (the key never leaves the token), imported with farmgatectl;
* an NSS DB (modutil) with SoftHSM as a module;
* pcscd -f with its own reader.conf.d: a vpcd reader on a free port (pcscd's socket is
  compiled in as /run/pcscd/pcscd.comm, so only one pcscd can run: EmulatedCac holds
  an flock on /tmp/farmgate-pcscd.lock for its lifetime and waits for it, bounded);
* build/tests/tools/cac_vpcd: libcacard (use_hw=removable) showing the token as a CAC card,
  bridged to the vpcd reader.
Everything is stopped by PID. Each OpenSC operation takes about 1-2.5 s (card detection and
APDU round trips).
"""

import fcntl
import os
import re
import subprocess
import time

import harness
from pki import Cert, run

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
OPENSC_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
PKCS11_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PCSCD = "/usr/sbin/pcscd"
MODUTIL = "/usr/bin/modutil"
OPENSC_TOOL = "/usr/bin/opensc-tool"
PKCS11_TOOL = "/usr/bin/pkcs11-tool"
LOCK_PATH = "/tmp/farmgate-pcscd.lock"
PCSCD_PIDFILE = "/run/pcscd/pcscd.pid"

CARD_PIN = "123456"   # the SoftHSM user PIN is the card's PIN (CAC: 4 to 8 digits)
SO_PIN = "12345678"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bridge_path(env):
    """build/tests/tools/cac_vpcd of the build under test (the release one as a fallback)."""
    for p in (os.path.join(env.build, "tests", "tools", "cac_vpcd"),
              os.path.join(REPO, "build", "tests", "tools", "cac_vpcd")):
        if os.access(p, os.X_OK):
            return p
    raise AssertionError("cac_vpcd is missing (make unit; it needs pkg-config libcacard)")


def _listeners(port):
    """Socket inodes listening on TCP port (from /proc/net/tcp{,6}; no connection is made,
    which vpcd would take for a card)."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                out.add(parts[9])
    return out


def _listening(port, pid=None):
    """True when something (pid, if given) listens on TCP port."""
    inodes = _listeners(port)
    if pid is None or not inodes:
        return bool(inodes)
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _free_port_pair():
    """A port P with P and P + 1 free (vpcd listens on both: two readers), below the
    ephemeral range (32768-60999) so that client connections do not take them meanwhile."""
    import random
    import socket
    for _ in range(200):
        port = random.randrange(20000, 32000, 2)
        socks = []
        try:
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port pair for vpcd")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def client_env(extra=None):
    """Environment for OpenSC/curl clients: no proxies, no SOFTHSM2_CONF of a test token."""
    e = harness._clean_env(extra)
    e.pop("SOFTHSM2_CONF", None)
    return e


class EmulatedCac:
    """See the module doc. ca: a pki.Pki (anything with sign_csr(csr, out, usage=...))."""

    def __init__(self, env, ca, cn="cac-user", pin=CARD_PIN, start=True, lock_timeout=240.0):
        self.env = env
        self.ca = ca
        self.cn = cn
        self.pin = pin
        self.module = OPENSC_MODULE
        self.key_id = "0001"
        self.key_uri = "pkcs11:id=%00%01;type=private"
        self.lock_timeout = lock_timeout
        self.ctl_bin = os.path.join(os.path.dirname(env.farmgated_bin), "farmgatectl")
        assert os.access(self.ctl_bin, os.X_OK), "%s is missing (run make all)" % self.ctl_bin
        self.bridge_bin = bridge_path(env)
        self.dir = env.mkdtemp("cac")
        os.chmod(self.dir, 0o700)
        self.pcscd = self.bridge = None
        self.port = None
        self._lock = None
        self._stopped = False
        self.bridge_rc = None
        self.cert_path = self.sha1 = self.sha256 = self.cert = None
        self._make_token()
        self._make_nssdb()
        env.on_cleanup(self.stop)
        if start:
            self.start()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # -- the token behind the card ------------------------------------------
    def _make_token(self):
        tokens = self.path("tokens")
        os.makedirs(tokens, mode=0o700)
        self.softhsm_conf = self.path("softhsm2.conf")
        with open(self.softhsm_conf, "w") as f:
            # removable: libcacard's use_hw=removable maps only removable slots
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = true\n" % tokens)
        self.penv = harness._clean_env({"SOFTHSM2_CONF": self.softhsm_conf, "FG_PIN": self.pin,
                                        "FG_SO_PIN": SO_PIN})
        label = "cac"
        tok = ["--module", SOFTHSM, "--token", "pkcs11:token=" + label, "--pin-env", "FG_PIN"]
        out = self._ctl("init", "--module", SOFTHSM, "--label", label, "--so-pin-env", "FG_SO_PIN",
                        "--pin-env", "FG_PIN")
        assert "initialised token %s" % label in out, out
        out = self._ctl("keygen", "--type", "rsa2048", "--label", "card", *tok)
        assert re.search(r"id=[0-9a-fA-F]+", out), "farmgatectl keygen printed no id:\n" + out
        csr = self.path("card.csr")
        self._ctl("csr", "--key-label", "card", "--subject", "/CN=%s/O=Farmgate tests" % self.cn,
                  "--out", csr, *tok)
        crt = self.ca.sign_csr(csr, self.path("card.crt"), usage="clientAuth")
        self._ctl("import-cert", crt, "--label", "card", *tok)
        self.cert = Cert(crt, label="card")
        self.cert_path, self.sha1, self.sha256 = crt, self.cert.sha1, self.cert.sha256

    def _ctl(self, *args):
        return run([self.ctl_bin, "token"] + list(args), env=self.penv, cwd=self.dir, timeout=120)[1]

    def _make_nssdb(self):
        self.nssdb = self.path("nssdb")
        os.makedirs(self.nssdb)
        run([MODUTIL, "-create", "-dbdir", "sql:" + self.nssdb, "-force"], env=self.penv,
            cwd=self.dir)
        run([MODUTIL, "-add", "SoftHSM", "-dbdir", "sql:" + self.nssdb, "-libfile", SOFTHSM,
             "-force"], env=self.penv, cwd=self.dir)

    # -- pcscd + bridge ---------------------------------------------------------
    def _take_lock(self):
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise AssertionError("%s still locked after %.0fs (another pcscd user)"
                                         % (LOCK_PATH, self.lock_timeout))
                time.sleep(0.2)
        self._lock = fd
        try:
            with open(PCSCD_PIDFILE) as f:
                other = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            other = None
        assert other is None or not _pid_alive(other), (
            "a pcscd not started by this helper is running (pid %d); pcscd's socket "
            "/run/pcscd/pcscd.comm is fixed, so only one can run" % other)

    def _start_pcscd(self):
        rconf = self.path("reader.conf.d")
        os.makedirs(rconf, exist_ok=True)
        last = ""
        for _ in range(5):
            port = _free_port_pair()
            with open(os.path.join(rconf, "vpcd"), "w") as f:
                f.write('FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x%X\n'
                        'LIBPATH      %s\nCHANNELID    0x%X\n' % (port, VPCD_DRIVER, port))
            log = open(self.path("pcscd.log"), "ab")
            try:
                self.pcscd = subprocess.Popen([PCSCD, "-f", "-c", rconf], stdout=log,
                                              stderr=subprocess.STDOUT, env=client_env(),
                                              cwd=self.dir, start_new_session=True)
            finally:
                log.close()
            # the listener must be this pcscd's (a free_port() can be taken meanwhile)
            pid = self.pcscd.pid
            deadline = time.monotonic() + 10
            while (time.monotonic() < deadline and self.pcscd.poll() is None
                   and not _listening(port, pid)):
                time.sleep(0.05)
            if self.pcscd.poll() is None and _listening(port, pid):
                # vpcd opens both readers or none; a failed one is missing from the list
                p = subprocess.run([OPENSC_TOOL, "-l"], capture_output=True, timeout=30,
                                   env=client_env(), cwd=self.dir)
                readers = (p.stdout + p.stderr).decode("utf-8", "replace")
                if "Virtual PCD 00 00" in readers and "Failed" not in harness._read_text(
                        self.path("pcscd.log")):
                    self.port = port
                    return
            harness._stop_popen(self.pcscd, timeout=5)
            last = harness._read_text(self.path("pcscd.log"))[-2000:]
        raise AssertionError("pcscd did not listen on its vpcd port:\n" + last)

    def _start_bridge(self):
        self.bridge_out = self.path("bridge.out")
        self.bridge_log = self.path("bridge.log")
        with open(self.bridge_out, "wb") as out, open(self.bridge_log, "wb") as err:
            self.bridge = subprocess.Popen(
                [self.bridge_bin, "-p", str(self.port), "-w", "10", "sql:" + self.nssdb],
                stdout=out, stderr=err, env=self.penv, cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "ready " in harness._read_text(self.bridge_out):
                return
            if self.bridge.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("cac_vpcd did not get ready (exit %s):\n%s%s" % (
            self.bridge.poll(), harness._read_text(self.bridge_out),
            harness._read_text(self.bridge_log)[-3000:]))

    def attach(self, port):
        """Instead of start(): no pcscd here, the bridge alone connects the card to a vpcd
        reader listening on 127.0.0.1:port (an appliance's pcscd, through QEMU's port
        forwarding)."""
        self.port = port
        self._start_bridge()
        return self

    def start(self):
        """Takes the pcscd lock, starts pcscd and the bridge, waits until OpenSC names the card
        in reader 0 a CAC (bounded)."""
        self._take_lock()
        self._start_pcscd()
        self._start_bridge()
        last = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            p = subprocess.run([OPENSC_TOOL, "-r", "0", "-n"], capture_output=True, timeout=30,
                               env=client_env(), cwd=self.dir)
            last = (p.stdout + p.stderr).decode("utf-8", "replace")
            if p.returncode == 0 and "Common Access Card" in last:
                self.card_name = last.strip()
                return self
            assert self.bridge.poll() is None, "cac_vpcd exited (%s):\n%s" % (
                self.bridge.returncode, harness._read_text(self.bridge_log)[-3000:])
            time.sleep(0.3)
        raise AssertionError("OpenSC does not see a CAC card in reader 0:\n%s\nbridge log:\n%s"
                             % (last, harness._read_text(self.bridge_log)[-3000:]))

    def stop(self):
        """SIGTERM the bridge (it must exit 0 within 10 s), then pcscd; releases the lock.
        Raises if the bridge had to be killed or exited non-zero."""
        if self._stopped:
            return
        self._stopped = True
        problem = None
        try:
            if self.bridge is not None:
                self.bridge_rc, killed = harness._stop_popen(self.bridge, timeout=10)
                if killed or self.bridge_rc != 0:
                    problem = "cac_vpcd did not stop cleanly on SIGTERM (exit %s, killed %s):\n%s" % (
                        self.bridge_rc, killed, harness._read_text(self.bridge_log)[-3000:])
            if self.pcscd is not None:
                harness._stop_popen(self.pcscd, timeout=10)
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
        if problem:
            raise AssertionError(problem)

    # -- client helpers -------------------------------------------------------
    def engine_conf(self, name="openssl-pkcs11.cnf"):
        """An OPENSSL_CONF for libp11's pkcs11 engine with MODULE_PATH = opensc-pkcs11.so."""
        p = self.path(name)
        with open(p, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
                    "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\n"
                    "engine_id = pkcs11\ndynamic_path = %s\nMODULE_PATH = %s\ninit = 0\n"
                    % (PKCS11_ENGINE, self.module))
        return p

    def pkcs11_tool(self, *args, pin=None, timeout=60):
        """pkcs11-tool --module opensc-pkcs11.so [--login --pin pin] args. Returns
        (returncode, stdout+stderr text)."""
        cmd = [PKCS11_TOOL, "--module", self.module]
        if pin is not None:
            cmd += ["--login", "--pin", pin]
        return run(cmd + list(args), env=client_env(), cwd=self.dir, timeout=timeout, check=False)
