#!/usr/bin/python3
"""make run: the Farmgate firmware image booted under QEMU in front of demo backends.

    tests/demo_qemu.py --build DIR --images DIR [--port 8080] [--ui-port 9443]

The flashable disk image boots under QEMU (TCG, OVMF, then systemd-boot) on a fresh
1 GiB disk in DIR/qemu-x86_64/run/; its proxy (guest port 80) and web UI (guest port
443) are forwarded to 127.0.0.1. On the host, Debian's nginx plays the backends:
farm "demo" (Host demo.local) is nginx A and B with a health check; farm "secure"
(Host secure.local) is an HTTPS nginx that requires a client certificate, and the
appliance authenticates with a key generated on its own SoftHSM token (inside the
guest), whose certificate a demo CA on the host issued. Both are configured through
the appliance's REST API, as an operator would, with an administrator password made
for this run and printed. The console is the terminal (Ctrl-] leaves); everything it
prints is in DIR/qemu-x86_64/run/serial.log. Ctrl-C (or SIGTERM) powers the guest
off and stops nginx by PID.
"""

import argparse
import os
import secrets
import select
import sys
import termios
import time
import tty

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import pki  # noqa: E402
from demo import HELLO, pick_port, prepare  # noqa: E402
from qemu import GUEST_HOST, Appliance, GuestMgmt, add_farm, token_client_cert  # noqa: E402


def console(app, stop):
    """The terminal becomes the appliance's serial console until Ctrl-] or a signal."""
    app._connect()
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        app.con.sendall(b"\n")
        while not stop["sig"] and app.alive():
            try:
                r, _, _ = select.select([fd, app.con], [], [], 0.5)
            except InterruptedError:
                continue
            if fd in r:
                data = os.read(fd, 1024)
                if not data or b"\x1d" in data:
                    break
                app.con.sendall(data)
            if app.con in r:
                try:
                    data = app.con.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--ui-port", type=int, default=9443)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    run_dir = os.path.join(build, "qemu-x86_64", "run")
    env, stop = prepare(build, run_dir, (build, os.path.dirname(run_dir)))
    app = None
    try:
        backends = []
        for name in ("A", "B"):
            ng = harness.NginxBackend(env, "custom", name="demo-" + name, server_body=HELLO % name)
            ng.start()
            backends.append(ng)
        ca = pki.Pki(env, "demo-ca", cn="Farmgate demo CA")
        crt, key = ca.server_cert("secure-backend", ["DNS:secure.internal"])

        http_port, ui_port = pick_port(a.port), pick_port(a.ui_port)
        app = Appliance(a.images, run_dir, boot="efi", disk_mb=1024, http_port=http_port, ui_port=ui_port)
        print("demo: booting %s under QEMU (TCG) ..." % os.path.join(a.images, "farmgate-qemu-x86_64.img"),
              flush=True)
        app.start()
        t = app.wait_ready(timeout=120)
        print("demo: the appliance serves %.1f s after QEMU started" % t, flush=True)

        # configured through its API, as an operator would
        password = secrets.token_urlsafe(12)
        gm = GuestMgmt(app, run_dir)
        admin = gm.setup(app.setup_code(), password)
        print("demo: a key generated on the appliance's token, its certificate from the demo CA ...",
              flush=True)
        cert = token_client_cert(admin, "appliance", ca, run_dir, "demo-client", "farmgate-demo-appliance")
        secure = pki.TlsNginx(env, crt, key, client_ca=ca.crt, name="secure",
                              users={pki.sha1_hex(cert): "DEMO\\appliance"}).start()
        add_farm(admin, {"name": "demo",
                         "servers": [{"address": GUEST_HOST, "httpPort": b.port} for b in backends],
                         "healthCheck": {"url": "http://demo.local/", "interval": "00:00:05",
                                         "timeout": "00:00:02", "responseMatch": "Hello"}},
                 "demo.local")
        add_farm(admin, {"name": "secure",
                         "servers": [{"address": GUEST_HOST, "httpsPort": secure.port,
                                      "hostName": "secure.internal", "certificatePin": pki.sha256_hex(crt)}],
                         "protocol": {"preserveHostHeader": False, "clientCertHash": pki.sha1_hex(cert)}},
                 "secure.local", https=True)
        try:
            r = harness.http_request(http_port, "GET", "/", host="secure.local", timeout=30)
            check = "self-check: %d %s" % (r.status, r.text.strip()[:60])
        except Exception as e:  # noqa: the demo still runs; show why
            check = "self-check failed: %r" % e
        print("""
============================================================================
 The Farmgate appliance runs under QEMU ({check})

 Web UI:  https://localhost:{ui}/   (a self-signed certificate made by the appliance)
          log in with the password  {pw}
          (made for this run; the setup code is used up. Change it under System.)
 Proxy:   http://127.0.0.1:{p}/
   curl -H 'Host: demo.local' http://127.0.0.1:{p}/      # farm "demo": nginx A, then B
   curl -H 'Host: secure.local' http://127.0.0.1:{p}/    # farm "secure": user=DEMO\\appliance
 The key behind farm "secure" was generated on the appliance's SoftHSM token and
 never left it; the host's nginx requires its certificate (SHA-1 {sha1}).

 The serial console follows when this runs in a terminal (a root shell: farmgatectl
 status, farmgate-system reboot | factory-reset); Ctrl-] leaves it, then Ctrl-C stops
 the demo.
 Console log: {log}
============================================================================
""".format(check=check, ui=ui_port, pw=password, p=http_port, sha1=pki.sha1_hex(cert),
           log=app.serial_log), flush=True)
        if sys.stdin.isatty():
            console(app, stop)
            if not stop["sig"]:
                print("demo: left the console; Ctrl-C stops the demo", flush=True)
        while not stop["sig"] and app.alive():
            time.sleep(0.5)
        return 0
    except AssertionError as e:
        print("demo: %s" % e, file=sys.stderr)
        return 1
    finally:
        print("demo: powering the appliance off, stopping nginx ...", flush=True)
        if app:
            app.stop()
        env.close()


if __name__ == "__main__":
    sys.exit(main())
