"""The firmware image under QEMU, for the QEMU tests and make run.

    from qemu import Appliance, image_dir

    app = Appliance(images, workdir, boot="efi")   # or boot="direct" (kernel + initramfs)
    app.start()
    app.wait_ready()                  # "farmgate: ready" on the console, proxy and UI answer
    rc, out = app.sh("farmgatectl status")          # a command on the serial console
    app.reboot(); app.stop()

QEMU runs under TCG (KVM does not work on these machines), one vCPU, user-mode
networking: the proxy (guest port 80) and the web UI (guest port 443) are
forwarded to free ports on 127.0.0.1, and the guest reaches the host's
loopback as 10.0.2.2. The serial console is a unix socket; everything the
guest prints is also appended to <workdir>/serial.log (kept for every run).
The disk is a copy of the flashable image (boot="efi": OVMF, then
systemd-boot from its EFI System Partition) or a blank disk (boot="direct":
QEMU loads bzImage and the initramfs itself); either way the first boot
makes the data partition on it.
"""

import os
import re
import shutil
import socket
import subprocess
import time

QEMU = "/usr/bin/qemu-system-x86_64"
OVMF = "/usr/share/ovmf/OVMF.fd"
GUEST_HOST = "10.0.2.2"  # the host's loopback, seen from the guest


def image_name(board="qemu-x86_64"):
    return "farmgate-%s.img" % board


def image_dir(build, board="qemu-x86_64"):
    """The images of a board's build that make test / make run made ($(O)/<board>/images)."""
    d = (os.environ.get("FARMGATE_IMAGES") if board == "qemu-x86_64" else None) or \
        os.path.join(build, board, "images")
    for n in ("bzImage", "rootfs.cpio.zst", image_name(board)):
        if not os.path.exists(os.path.join(d, n)):
            raise AssertionError("%s is missing: make test builds the image (make O=%s/%s "
                                 "%s_defconfig image)" % (os.path.join(d, n), build, board,
                                                          board.replace("-", "_")))
    return d


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Appliance:
    def __init__(self, images, workdir, boot="direct", disk_mb=256, mem_mb=512, disk=None,
                 serial_log=None, http_port=None, ui_port=None, forward=None, board="qemu-x86_64",
                 hardware="virtio"):
        """hardware: "virtio" (QEMU's paravirtual disk, network and RNG) or "pc" (a q35
        machine whose disk is a USB stick on an xHCI controller and whose network card is
        an Intel e1000e, as on a real PC)."""
        self.images = images
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.boot = boot
        self.hardware = hardware
        self.mem_mb = mem_mb
        self.disk = disk or os.path.join(workdir, "disk.img")
        if disk is None:
            if boot == "efi":
                shutil.copyfile(os.path.join(images, image_name(board)), self.disk)
                # a bigger disk than the image, as on a USB stick: the backup GPT moves
                os.truncate(self.disk, max(disk_mb << 20, os.path.getsize(self.disk)))
            else:
                with open(self.disk, "wb") as f:
                    f.truncate(disk_mb << 20)
        self.serial_log = serial_log or os.path.join(workdir, "serial.log")
        self.sock_path = os.path.join(workdir, "console.sock")
        if len(self.sock_path) > 100:
            import tempfile
            self.sock_path = os.path.join(tempfile.mkdtemp(prefix="fgq-"), "console.sock")
        self.http_port = http_port or _free_port()
        self.ui_port = ui_port or _free_port()
        # more guest ports reached from the host: {guest port: host port}
        self.forward = {g: (h or _free_port()) for g, h in (forward or {}).items()}
        self.proc = None
        self.con = None
        self.started = None
        self._n = 0
        self._buf = b""

    # -- the machine --------------------------------------------------------
    def argv(self):
        a = [QEMU, "-accel", "tcg", "-m", str(self.mem_mb), "-smp", "1", "-display", "none",
             "-no-user-config", "-nodefaults", "-rtc", "base=utc",
             "-chardev", "socket,id=con,path=%s,server=on,wait=off,logfile=%s,logappend=on"
             % (self.sock_path, self.serial_log),
             "-serial", "chardev:con",
             "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:80,hostfwd=tcp:127.0.0.1:%d-:443%s"
             % (self.http_port, self.ui_port,
                "".join(",hostfwd=tcp:127.0.0.1:%d-:%d" % (h, g) for g, h in self.forward.items()))]
        if self.hardware == "pc":
            a += ["-machine", "q35",
                  "-drive", "if=none,id=stick,file=%s,format=raw,cache=writeback" % self.disk,
                  "-device", "qemu-xhci,id=xhci",
                  "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on",
                  "-device", "e1000e,netdev=n0,romfile="]
        else:
            a += ["-drive", "file=%s,if=virtio,format=raw,cache=writeback" % self.disk,
                  "-device", "virtio-net-pci,netdev=n0,romfile=",
                  "-device", "virtio-rng-pci"]
        if self.boot == "efi":
            a += ["-bios", OVMF]
        else:
            with open(os.path.join(self.images, "cmdline")) as f:
                cmdline = f.read().strip()
            a += ["-kernel", os.path.join(self.images, "bzImage"),
                  "-initrd", os.path.join(self.images, "rootfs.cpio.zst"), "-append", cmdline]
        return a

    def start(self):
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        with open(self.serial_log, "ab") as f:
            f.write(("\n===== %s: QEMU start (%s boot) =====\n"
                     % (time.strftime("%Y-%m-%d %H:%M:%S"), self.boot)).encode())
        self.mark = os.path.getsize(self.serial_log)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.dir, "qemu.log"), "ab"),
                                     stderr=subprocess.STDOUT)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def serial(self, since=0):
        with open(self.serial_log, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def wait_serial(self, pattern, timeout=60, since=None):
        """The first match of pattern (regex) in what the guest printed since the
        last start (or since); raises with the log's tail after timeout."""
        since = self.mark if since is None else since
        end = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.serial(since))
            if m:
                return m
            if not self.alive():
                raise AssertionError("QEMU exited (%s) before %r; console:\n%s"
                                     % (self.proc.returncode, pattern, self.serial(since)[-3000:]))
            if time.monotonic() > end:
                raise AssertionError("no %r on the console within %ss; console:\n%s"
                                     % (pattern, timeout, self.serial(since)[-3000:]))
            time.sleep(0.1)

    def http_ok(self, port, tls=False, timeout=2.0):
        """True when something in the guest answers an HTTP request on port."""
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            return False
        try:
            if tls:
                import ssl
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.")
        except OSError:
            return False
        finally:
            s.close()

    def wait_serving(self, timeout=60):
        """Seconds from QEMU's start until the proxy and the UI both answer."""
        end = time.monotonic() + timeout
        while not (self.http_ok(self.http_port) and self.http_ok(self.ui_port, tls=True)):
            if not self.alive():
                raise AssertionError("QEMU exited (%s); console:\n%s"
                                     % (self.proc.returncode, self.serial(self.mark)[-3000:]))
            if time.monotonic() > end:
                raise AssertionError("the appliance is not serving after %ss; console:\n%s"
                                     % (timeout, self.serial(self.mark)[-3000:]))
            time.sleep(0.05)
        return time.monotonic() - self.started

    def wait_ready(self, timeout=90):
        """Waits for the boot banner's "ready" and for the proxy and the UI to
        answer; returns the seconds from QEMU's start until both answered."""
        t = self.wait_serving(timeout)
        self.wait_serial(r"farmgate: ready", timeout)
        return t

    def setup_code(self):
        return self.wait_serial(r"setup code: ([0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4})", 30).group(1)

    # -- the serial console -------------------------------------------------
    def _connect(self):
        if self.con is None:
            self.con = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.con.connect(self.sock_path)
            self.con.settimeout(0.2)
            self._buf = b""

    def _drop_console(self):
        if self.con is not None:
            self.con.close()
            self.con = None

    def sh(self, command, timeout=30, check=True):
        """Runs command in the console's root shell; returns (status, output)."""
        self._connect()
        self._n += 1
        tag = "FGQ%d" % self._n
        self.con.sendall(("%s; echo %s:$?:END\n" % (command, tag)).encode())
        rx = re.compile(r"%s:(\d+):END" % tag)
        end = time.monotonic() + timeout
        while True:
            text = self._buf.decode("utf-8", "replace")
            m = rx.search(text)
            if m:
                out = text[:m.start()]
                self._buf = self._buf[len(text[:m.end()].encode()):]
                # drop the echoed command line (the terminal may have wrapped it)
                echoed = out.rfind("%s:$?:END" % tag)
                if echoed != -1:
                    nl = out.find("\n", echoed)
                    out = out[nl + 1:] if nl != -1 else ""
                rc = int(m.group(1))
                if check and rc != 0:
                    raise AssertionError("guest command %r failed (%d):\n%s" % (command, rc, out))
                return rc, out.replace("\r", "")
            if time.monotonic() > end:
                raise AssertionError("guest command %r: no answer within %ss; console:\n%s"
                                     % (command, timeout, text[-2000:]))
            try:
                d = self.con.recv(65536)
                if not d:
                    raise AssertionError("the console closed during %r" % command)
                self._buf += d
            except socket.timeout:
                pass

    def send(self, command):
        """Types command on the console without waiting for it (reboot, poweroff)."""
        self._connect()
        self.con.sendall((command + "\n").encode())

    def guest_file(self, path):
        return self.sh("cat %s" % path)[1]

    # -- power --------------------------------------------------------------
    def reboot(self, timeout=90, trigger=None):
        """Reboots the guest from its console (init stops the services, unmounts
        the data partition), or by calling trigger() (the web UI's reboot);
        returns the seconds until it serves again."""
        since = os.path.getsize(self.serial_log)
        t0 = time.monotonic()
        if trigger:
            trigger()
        else:
            self.send("reboot")
        self._drop_console()
        self.wait_serial(r"farmgate: stopping", 30, since=since)
        self.wait_serial(r"farmgate: Farmgate \S+ \(", timeout, since=since)
        self.mark = since
        self.started = t0
        # the old system's last answers may still be in flight: wait for the new banner
        self.wait_serial(r"farmgate: ready", timeout, since=since)
        return self.wait_serving(timeout)

    def stop(self, timeout=30):
        """Powers the guest off from its console (clean unmount), else kills QEMU."""
        if not self.alive():
            self._drop_console()
            return
        try:
            self.send("poweroff")
            self.proc.wait(timeout)
        except Exception:
            pass
        finally:
            self._drop_console()
            if self.alive():
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------
# provisioning through the management API, as an operator does it (tests
# and make run): admin is a logged-in mgmt_client.MgmtClient
# --------------------------------------------------------------------------

API = "/api/v1"


def api_ok(r, what):
    assert 200 <= r.status < 300, "%s: %s" % (what, r.summary())
    return r.json() if r.body else {}


def token_client_cert(admin, token, ca, workdir, label, cn):
    """An EC P-256 key generated on the appliance's token, its CSR signed by ca
    (a pki.Pki on the host, backdated an hour: the guest's clock may be a
    little behind) and the certificate imported beside the key. Returns the
    certificate's path on the host."""
    t = API + "/tokens/" + token
    api_ok(admin.post(t + "/keys", {"type": "EC-P256", "label": label}), "key generation on " + token)
    csr = os.path.join(workdir, label + ".csr")
    with open(csr, "w") as f:
        f.write(api_ok(admin.post(t + "/csr", {"keyLabel": label, "subject": "/CN=" + cn}), "CSR")["csr"])
    cert = ca.sign_csr(csr, os.path.join(workdir, label + ".crt"), usage="clientAuth", backdate=3600)
    with open(cert) as f:
        api_ok(admin.post(t + "/certificates", {"pem": f.read()}), "certificate import")
    return cert


def add_farm(admin, farm, host, https=False):
    """POST /farms, then a rule routing Host: host to it (ARR's shape)."""
    api_ok(admin.post(API + "/farms", farm), "POST /farms " + farm["name"])
    rules = api_ok(admin.get(API + "/rules"), "GET /rules")
    rules = rules.get("rules", rules) if isinstance(rules, dict) else rules
    rules.append({"name": "ARR_%s_loadbalance" % farm["name"], "patternSyntax": "Wildcard",
                  "stopProcessing": True, "match": {"url": "*"},
                  "conditions": [{"input": "{HTTP_HOST}", "pattern": host}],
                  "action": {"type": "Rewrite",
                             "url": "%s://%s/{R:0}" % ("https" if https else "http", farm["name"])}})
    api_ok(admin.put(API + "/rules", rules), "PUT /rules")


class GuestMgmt:
    """The appliance's farmgate-mgmt as mgmt_client.MgmtClient sees one: the
    forwarded UI port, and the certificate the appliance made at its first
    start (read on its console, so that TLS is verified)."""

    class _Env:
        slow = 1

    def __init__(self, app, workdir):
        self.env = self._Env()
        self.host = "127.0.0.1"
        self.port = app.ui_port
        self.origin = "https://127.0.0.1:%d" % self.port
        self.cert_path = os.path.join(workdir, "mgmt-cert.pem")
        pem = app.guest_file("/data/mgmt/mgmt-cert.pem")
        assert "BEGIN CERTIFICATE" in pem, pem
        with open(self.cert_path, "w") as f:
            f.write(pem)

    def client(self):
        from mgmt_client import MgmtClient
        return MgmtClient(self, timeout=60)

    def setup(self, code, password=None):
        from mgmt_client import PASSWORD
        c = self.client()
        r = c.setup(code, password or PASSWORD)
        assert r.status == 200 and c.sid, "setup with the console's code: " + r.summary()
        return c

    def login(self, password=None):
        from mgmt_client import PASSWORD
        c = self.client()
        r = c.login(password or PASSWORD)
        assert r.status == 200, "login: " + r.summary()
        return c
