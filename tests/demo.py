#!/usr/bin/python3
"""make run: farmgated in the foreground in front of nginx backends.

    tests/demo.py --build DIR [--port 8080]

Farm "demo" (hosts demo.local) has 2 servers, nginx A and B, answering
"Hello from demo server A/B, Host=..., X-Forwarded-For=...". Farm "static"
(host static.local) uses the same two nginx instances, which serve a static
page for that Host. Farm "secure" (host secure.local) is the appliance's
promise: an HTTPS backend (nginx) that requires a client certificate and maps
it to a user, and farmgated authenticates with a certificate whose key was
generated on a demo SoftHSM token (random PINs, made for this run) and never
leaves it. An HTTPS listener (port + 363, default 8443) shows the front end:
its server key is on the same token, it asks for client certificates (Accept)
from the demo CA, and farm "whoami" (host badge.local) echoes what the backend
is told: X-ARR-ClientCert, X-ARR-SSL, X-Forwarded-Proto. A demo badge (a
software client certificate) is written beside the config. Ctrl-C (or SIGTERM)
stops everything by PID.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))
import harness  # noqa: E402
import pki  # noqa: E402
import secrets  # noqa: E402

HELLO = ('location / {\n default_type text/plain;\n'
         ' return 200 "Hello from demo server %s, Host=$host, X-Forwarded-For=$http_x_forwarded_for\\n";\n}\n')
WHOAMI = ('location / {\n default_type text/plain;\n'
          ' return 200 "X-Forwarded-Proto: $http_x_forwarded_proto\\nX-ARR-SSL: $http_x_arr_ssl\\n'
          'X-ARR-ClientCert: $http_x_arr_clientcert\\n";\n}\n')
STATIC = """
server {
  listen 127.0.0.1:@PORT@;
  server_name static.local;
  location / { root %s; add_header X-Served-By "nginx %s" always; }
}
"""


def pick_port(first, tries=100):
    for p in range(first, first + tries):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    return harness.free_port()


def prepare(build, run_dir, reachable):
    """A fresh run_dir, the reachable directories opened to nginx's workers (nobody must
    reach run_dir), SIGINT and SIGTERM recorded instead of raised. Returns (harness.Env,
    stop) where stop["sig"] is the signal once one came."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    for d in reachable:
        os.chmod(d, os.stat(d).st_mode | 0o055)
    stop = {"sig": None}

    def on_signal(signum, frame):
        stop["sig"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return harness.Env(os.path.join(build, "farmgated"), run_dir, build=build), stop


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True)
    ap.add_argument("--port", type=int, default=8080)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    binary = os.path.join(build, "farmgated")
    if not os.access(binary, os.X_OK):
        print("demo: %s not found; build it first (make all)" % binary, file=sys.stderr)
        return 1
    demo_dir = os.path.join(build, "demo")
    env, stop = prepare(build, os.path.join(demo_dir, "run"), (build, demo_dir))
    fg = None
    code = 0
    try:
        backends = []
        for name in ("A", "B"):
            ng = harness.NginxBackend(env, "custom", name="demo-" + name, server_body=HELLO % name)
            ng.http_extra = STATIC % (ng.html, name)
            ng.start()
            with open(os.path.join(ng.html, "index.html"), "w") as f:
                f.write("<html><body><h1>Static page from nginx %s</h1>"
                        "<p>served through farmgated, farm 'static'</p></body></html>\n" % name)
            backends.append(ng)
        # the demo token: a key pair generated on SoftHSM, a CSR signed by a demo CA
        print("demo: provisioning a SoftHSM token with a key generated on it ...", flush=True)
        ca = pki.Pki(env, "demo-ca", cn="Farmgate demo CA")
        tok = pki.SoftToken(env, label="farmgate-demo", user_pin=secrets.token_hex(8),
                            so_pin=secrets.token_hex(8))
        cert = tok.client_cert(ca, "ec256", "farmgate-demo-appliance")
        crt, key = ca.server_cert("secure-backend", ["DNS:secure.internal"])
        secure = pki.TlsNginx(env, crt, key, client_ca=ca.crt, users={cert.sha1: "DEMO\\appliance"},
                              name="secure").start()
        backends_secure = harness.server(80, hostName="secure.internal", httpsPort=secure.port)
        whoami = harness.NginxBackend(env, "custom", name="whoami", server_body=WHOAMI)
        whoami.start()
        front = tok.server_cert(ca, "ec256", cn="localhost", san=["DNS:localhost", "DNS:badge.local",
                                                                  "IP:127.0.0.1"], label="front")
        badge, badge_key = ca.software_client("demo-badge", "Demo Badge User",
                                              subject="/O=Farmgate demo/CN=Demo Badge User")
        port = pick_port(a.port)
        tls_port = pick_port(port + 363)
        mgmt_port = pick_port(port + 1363)
        cfg = harness.make_config(
            farms=[harness.farm("demo", [harness.server(b.port) for b in backends],
                                healthCheck={"url": "http://demo.local/", "interval": "00:00:05",
                                             "timeout": "00:00:02", "responseMatch": "Hello"}),
                   harness.farm("static", [harness.server(b.port) for b in backends]),
                   harness.farm("whoami", [harness.server(whoami.port)]),
                   harness.farm("secure", [backends_secure],
                                protocol={"preserveHostHeader": False, "clientCertHash": cert.sha1,
                                          "backendCaFile": ca.crt})],
            rules=[harness.arr_lb_rule("demo", "demo.local"), harness.arr_lb_rule("static", "static.local"),
                   harness.arr_lb_rule("whoami", "badge.local"),
                   dict(harness.arr_lb_rule("secure", "secure.local"),
                        action={"type": "Rewrite", "url": "https://secure/{R:0}"})],
            listeners=[{"address": "127.0.0.1", "port": port},
                       {"address": "127.0.0.1", "port": tls_port,
                        "ssl": {"certificates": [{"certificateHash": front.sha1}],
                                "clientCertificates": "Accept", "clientCaFile": ca.crt}}],
            tokens=[tok.token_cfg()],
            control={"socket": os.path.join(demo_dir, "control.sock")},
            management={"address": "127.0.0.1", "port": mgmt_port})
        cfg_path = os.path.join(demo_dir, "farmgated.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
        print("demo: nginx A on 127.0.0.1:%d (pid %d), nginx B on 127.0.0.1:%d (pid %d)"
              % (backends[0].port, backends[0].pid, backends[1].port, backends[1].pid))
        print("demo: starting %s -c %s" % (binary, cfg_path), flush=True)
        fg = subprocess.Popen([binary, "-c", cfg_path], stdin=subprocess.DEVNULL, process_group=0,
                              env=dict(os.environ, **env.proc_env))
        if not harness.wait_port(port, timeout=10, alive=lambda: fg.poll() is None):
            print("demo: farmgated did not start listening on 127.0.0.1:%d (exit code %s)"
                  % (port, fg.poll()), file=sys.stderr)
            return 1
        # the management plane: its own process, its own HTTPS port, the same file
        mgmt_dir = os.path.join(demo_dir, "mgmt")  # kept: the password survives make run
        mgmt_bin = os.path.join(build, "farmgate-mgmt")
        mgmt = subprocess.Popen([mgmt_bin, "-c", cfg_path, "-d", mgmt_dir], stdin=subprocess.DEVNULL,
                                process_group=0, env=dict(os.environ, **env.proc_env))
        env.on_cleanup(lambda: harness._stop_popen(mgmt, timeout=10))
        harness.wait_port(mgmt_port, timeout=10, alive=lambda: mgmt.poll() is None)
        code_file = os.path.join(mgmt_dir, "setup-code")
        if os.path.exists(code_file):
            with open(code_file) as f:
                login = "first visit: set the administrator password with the setup code %s" % f.read().strip()
        else:
            login = "log in with the administrator password set earlier (rm -r %s to start over)" % mgmt_dir
        try:
            r = harness.http_request(port, "GET", "/", host="demo.local", timeout=5)
            check = "self-check: %d %s" % (r.status, r.text.strip())
        except Exception as e:  # noqa: the demo still runs; show why
            check = "self-check failed: %r" % e
        print("""
============================================================================
 farmgated is running on http://127.0.0.1:{p}/   ({check})

 Try it (round robin over the two servers of farm "demo"):
   curl -H 'Host: demo.local' http://127.0.0.1:{p}/
   curl -H 'Host: demo.local' http://127.0.0.1:{p}/
   curl -H 'Host: demo.local' -H 'X-Forwarded-For: 203.0.113.7' http://127.0.0.1:{p}/some/path
   curl -i -H 'Host: static.local' http://127.0.0.1:{p}/      # farm "static"
   curl -i -H 'Host: nowhere.local' http://127.0.0.1:{p}/     # no rule matches: 404

 The key on the token (farm "secure": HTTPS to a backend that requires a client certificate):
   curl -H 'Host: secure.local' http://127.0.0.1:{p}/    # the backend says user=DEMO\\appliance
   The certificate's key was generated on SoftHSM token "farmgate-demo" ({tokdir})
   and never left it; its SHA-1 is {sha1} (clientCertHash). List it with:
   SOFTHSM2_CONF={conf} {ctl} token certs --token pkcs11:token=farmgate-demo --pin-file {pinf}

 The HTTPS front end on https://127.0.0.1:{tp}/ (server key on the same token, SHA-1 {fsha1}),
 asking for badges from the demo CA and relaying them to farm "whoami":
   curl --cacert {ca} -H 'Host: badge.local' https://localhost:{tp}/                # no badge
   curl --cacert {ca} --cert {badge} --key {bkey} \\
        -H 'Host: badge.local' https://localhost:{tp}/                               # with one

 Health checks and server states (farm "demo" probes each server every 5 s):
   export FARMGATE_SOCKET={sock}
   {fgctl} status
   {fgctl} server demo 127.0.0.1:{pa} drain     # ARR's Disallow New Connections
   {fgctl} farm demo verify                    # Verify URL Test
   {fgctl} server demo 127.0.0.1:{pa} available

 The web UI (its certificate is self-signed, made at first start):
   https://127.0.0.1:{mp}/   {login}

 Config: {cfg}   (edit it, then: kill -HUP {pid} to reload)
 Logs (access lines included) appear below. Press Ctrl-C to stop everything.
============================================================================
""".format(p=port, check=check, cfg=cfg_path, pid=fg.pid, tokdir=tok.dir, sha1=cert.sha1,
           conf=tok.conf, ctl=tok.ctl_bin, pinf=tok.pin_file, tp=tls_port, fsha1=front.sha1,
           ca=ca.crt, badge=badge, bkey=badge_key, fgctl=tok.ctl_bin,
           sock=os.path.join(demo_dir, "control.sock"), pa=backends[0].port, mp=mgmt_port,
           login=login), flush=True)
        while stop["sig"] is None:
            if fg.poll() is not None:
                print("demo: farmgated exited with code %s" % fg.returncode, file=sys.stderr)
                code = 1
                break
            time.sleep(0.3)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if fg is not None and fg.poll() is None:
            print("\ndemo: stopping farmgated (pid %d)" % fg.pid, flush=True)
            harness._stop_popen(fg, timeout=10)
        try:
            env.close()  # nginx A and B, by PID
        except Exception as e:  # noqa
            print("demo: cleanup: %s" % e, file=sys.stderr)
        print("demo: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
