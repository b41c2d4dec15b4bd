#!/usr/bin/python3
"""make bench: farmgated and nginx side by side, in one run, on this machine.

Both proxies get the same job: one worker, one backend farm (Debian nginx answering a small
body), keep-alive to the client and pooled keep-alive connections to the backend,
X-Forwarded-For added, no access log. wrk drives each in alternating rounds so that noise from
the shared 2 cores hits both alike; the medians and their ratios go to
<build>/bench/results.md (and results.json).

Measured per proxy: requests/s, p50 and p99 latency (wrk --latency), the proxy process's CPU
time per request (utime+stime from /proc), its resident memory after the runs (VmRSS, VmHWM).
That plain-HTTP farm has no token, so its signatures row says n/a.

Then, in the same run, the token scenarios (issue 3): upstream HTTPS to backends that require
a client certificate whose RSA-2048 key lives on a SoftHSM token, farmgated (tokens[],
clientCertHash) against nginx (proxy_ssl_certificate_key "engine:pkcs11:...", libp11's
engine), both reaching the token through the test shim (build/tests/libfgshim.so) that counts
signatures per process:
  1. warm: keep-alive, pooled and resumed upstream TLS: requests/s, p99, token signatures per
     1000 requests (target 0);
  2. handshake-bound: the backend refuses keep-alive and resumption, so every request costs a
     full handshake and a token signature: requests/s against the token's raw signature rate
     (farmgatectl token bench, same key, same shim; target >= 0.9 of the RSA-PSS rate);
  3. slow token: 100 ms per signature while handshakes wait on it; the warm farm's p99 under
     that load (nginx's single worker stalls on every signature).
Each scenario gets its own table in results.md and a key under "token" in results.json.

Then the HTTPS listeners (issue 4), key "front_tls" in results.json: handshakes/s of
farmgated's and nginx's front TLS, with the same certificate files (RSA-2048 and ECDSA P-256,
from tests/integration/tlsbench_pki.py) and the same plain-HTTP backend, full handshakes
(`openssl s_time -new`) and TLS 1.3 resumptions (`-reuse`), each connection carrying one small
GET through to the backend; 2 s_time clients at once, --front-seconds (2) per run, --rounds
alternating. Also farmgated with its RSA-2048 key on a SoftHSM token (certificateHash)
against nginx's file key, labelled as such. Proxy CPU per handshake beside each rate.
"""
import argparse
import base64
import glob
import grp
import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def nginx_worker(master_pid):
    """The single worker's pid (the process doing the work)."""
    end = time.time() + 5
    while time.time() < end:
        out = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise RuntimeError("no nginx worker")


def nginx_conf(d, body, main=""):
    temp = "".join("%s_temp_path %s/%s;\n" % (k, d, k) for k in
                   ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return ("daemon off; master_process on; worker_processes 1; pid %s/nginx.pid;\n%s"
            "error_log %s/error.log warn;\nevents { worker_connections 8192; }\n"
            "http { access_log off; %s %s }\n" % (d, main, d, temp, body))


def start_nginx(d, body, main="", env=None):
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(d, body, main))
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, "stderr.log"), "w"), env=env)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def parse_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "us" else n * 1000 if m.group(2) == "s" else n


def wrk(port, seconds, conns, host):
    p = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency",
                        "-H", "Host: " + host, "http://127.0.0.1:%d/bench" % port],
                       capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(p.stdout, p.stderr)


def parse_wrk(out, err=""):
    """wrk --latency's output: requests/s, requests, p50/p99 (ms), socket errors, non-2xx."""
    try:
        r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
             "requests": int(re.search(r"(\d+) requests in", out).group(1)),
             # anchored: a "+/- Stdev" column such as "87.50%" must not match
             "p50": parse_ms(re.search(r"^\s*50%[ \t]+(\S+)", out, re.M).group(1)),
             "p99": parse_ms(re.search(r"^\s*99%[ \t]+(\S+)", out, re.M).group(1)),
             "errors": 0, "socket_errors": 0, "non2xx": 0}
    except (AttributeError, ValueError):
        raise RuntimeError("cannot read wrk's output:\n%s%s" % (out, err))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    r["errors"] = r["socket_errors"] + r["non2xx"]
    return r


# ---- token scenarios (issue 3) -------------------------------------------------------------

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
OPENSSL = "/usr/bin/openssl"
SO_PIN, USER_PIN = "12345678", "1234"
TOKEN_LABEL, KEY_LABEL = "bench", "appliance"
BACKEND_NAME = "backend.bench"  # the backends' certificate SAN, SNI and Host
SLOW_MS = 100
TPM_MS = 12  # a TPM signs 60-90 times a second (PLATFORM-NOTES): the token is the limit


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith(("OPENSSL_", "SOFTHSM2_", "FGSHIM_"))}
    env.update(extra or {})
    return env


def run_cmd(cmd, env=None, cwd=None, timeout=120):
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or clean_env(), cwd=cwd,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("`%s` failed (exit %d):\n%s%s" % (" ".join(cmd), p.returncode,
                                                            p.stdout, p.stderr))
    return p.stdout


def pem_sha1(path):
    with open(path) as f:
        text = f.read()
    b64 = text.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return hashlib.sha1(base64.b64decode("".join(b64.split()))).hexdigest().upper()


def engine_path():
    for p in sorted(glob.glob("/usr/lib/*/engines-3/pkcs11.so")):
        return p
    raise RuntimeError("libp11's OpenSSL engine (engines-3/pkcs11.so) is missing: "
                       "apt-get install libengine-pkcs11-openssl")


class TokenLab:
    """A SoftHSM token in <tmp>/token (owned by nobody so nginx's workers can read it), a test
    CA (openssl CLI), the appliance's RSA-2048 key generated on the token by farmgatectl with
    its certificate (CSR -> CA -> imported beside the key; on disk only the public cert), the
    backends' ECDSA P-256 server certificate, and the test shim in front of SoftHSM for
    every process that uses the token (control file, per-pid stats files)."""

    def __init__(self, tmp, ctl, shim):
        self.ctl_bin, self.shim = ctl, shim
        self.dir = os.path.join(tmp, "token")
        self.pki = os.path.join(tmp, "pki")
        self.statsdir = os.path.join(self.dir, "stats")
        tokens = os.path.join(self.dir, "tokens")
        for d in (self.dir, self.pki, tokens, self.statsdir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        self.conf = os.path.join(self.dir, "softhsm2.conf")
        # reset_on_fork: nginx's worker re-initialises the module after fork (libp11 does)
        # and so gets its own stats file from the shim, instead of writing none
        with open(self.conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\nlibrary.reset_on_fork = true\n" % tokens)
        os.chmod(self.conf, 0o644)
        self.control = os.path.join(self.dir, "shim.ctl")
        self.set_delay(0)
        # the shim's PIN-failure counter file: every process writes it in place on log-in,
        # nginx's workers as nobody
        state = self.control + ".state"
        with open(state, "w") as f:
            f.write("pin_failures=0\n")
        os.chmod(state, 0o666)
        self.env = clean_env({"SOFTHSM2_CONF": self.conf})
        # what a process using the token through the shim gets (farmgated, nginx, the bench)
        self.shim_env = {"SOFTHSM2_CONF": self.conf, "FGSHIM_MODULE": SOFTHSM,
                         "FGSHIM_CONTROL": self.control,
                         "FGSHIM_STATS": os.path.join(self.statsdir, "stats.%p")}
        out = self.ctl(["init", "--label", TOKEN_LABEL, "--so-pin-env", "FG_SO_PIN",
                        "--pin-env", "FG_PIN"], token=False)
        assert "initialised token" in out, out
        self.ctl(["keygen", "--type", "rsa2048", "--label", KEY_LABEL, "--pin-env", "FG_PIN"])
        csr = os.path.join(self.pki, "appliance.csr")
        self.ctl(["csr", "--key-label", KEY_LABEL, "--subject", "/CN=farmgate-bench-appliance",
                  "--out", csr, "--pin-env", "FG_PIN"])
        self.ca_crt, self.ca_key = self.p("ca.crt"), self.p("ca.key")
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ca_key,
                     "-out", self.ca_crt, "-days", "7", "-subj", "/CN=Farmgate bench CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.serial = 0x4000
        self.cert = self.sign(csr, self.p("appliance.crt"), "clientAuth")
        self.ctl(["import-cert", self.cert, "--pin-env", "FG_PIN"])
        self.sha1 = pem_sha1(self.cert)
        self.be_key, be_csr = self.p("backend.key"), self.p("backend.csr")
        self.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", self.be_key, "-out", be_csr, "-subj",
                     "/CN=" + BACKEND_NAME)
        self.be_crt = self.sign(be_csr, self.p("backend.crt"), "serverAuth",
                                "DNS:" + BACKEND_NAME)
        # farmgated's PIN file: root's, no group/other bits
        self.pin_file = os.path.join(self.dir, "user.pin")
        fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(USER_PIN + "\n")
        # nginx's workers run as nobody: they must read the token and write their stats
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for root, dirs, files in os.walk(tokens):
            os.chown(root, uid, gid)
            for n in files:
                os.chown(os.path.join(root, n), uid, gid)
        os.chown(self.statsdir, uid, gid)
        os.chown(state, uid, gid)
        # nginx's OpenSSL configuration: libp11's engine on the shim, initialised (nginx
        # calls ENGINE_by_id but never ENGINE_init)
        self.openssl_conf = os.path.join(self.dir, "openssl-nginx.cnf")
        with open(self.openssl_conf, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
                    "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\n"
                    "engine_id = pkcs11\ndynamic_path = %s\nMODULE_PATH = %s\ninit = 1\n"
                    % (engine_path(), shim))
        os.chmod(self.openssl_conf, 0o644)
        self.engine_key = ("engine:pkcs11:pkcs11:token=%s;object=%s;type=private;pin-value=%s"
                           % (TOKEN_LABEL, KEY_LABEL, USER_PIN))

    def p(self, name):
        return os.path.join(self.pki, name)

    def openssl(self, *args):
        return run_cmd([OPENSSL] + list(args), cwd=self.pki)

    def sign(self, csr, out, usage, san=None):
        self.serial += 1
        ext = ["basicConstraints=critical,CA:FALSE",
               "keyUsage=critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage=" + usage, "subjectKeyIdentifier=hash",
               "authorityKeyIdentifier=keyid"] + (["subjectAltName=" + san] if san else [])
        extfile = out + ".ext"
        with open(extfile, "w") as f:
            f.write("\n".join(ext) + "\n")
        self.openssl("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                     "-set_serial", str(self.serial), "-days", "7", "-sha256", "-out", out,
                     "-extfile", extfile)
        return out

    def ctl(self, args, token=True, module=SOFTHSM, env=None, timeout=120):
        cmd = [self.ctl_bin, "token"] + args + ["--module", module]
        if token:
            cmd += ["--token", "pkcs11:token=" + TOKEN_LABEL]
        e = dict(env or self.env)
        e.update({"FG_PIN": USER_PIN, "FG_SO_PIN": SO_PIN})
        return run_cmd(cmd, env=e, cwd=self.dir, timeout=timeout)

    def raw_rate(self, seconds):
        """farmgatectl token bench on the appliance key through the shim: {mech: sig/s}."""
        out = self.ctl(["bench", "--thumbprint", self.sha1, "--seconds", "%g" % seconds,
                        "--pin-env", "FG_PIN"], module=self.shim,
                       env=clean_env(self.shim_env), timeout=seconds * 4 + 60)
        rates = {m.group(1): float(m.group(2))
                 for m in re.finditer(r"^(\S+) ([\d.]+) signatures/s", out, re.M)}
        if "RSA-PSS-SHA256" not in rates or "RSA-PKCS1-SHA256" not in rates:
            raise RuntimeError("farmgatectl token bench printed no RSA rates:\n" + out)
        return rates

    def set_delay(self, ms):
        tmp = self.control + ".new"
        with open(tmp, "w") as f:
            f.write("sign_delay_ms=%d\n" % ms)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.control)

    def signatures(self, pids):
        """Sum of the shim's signature counters of these processes (0 for a process that has
        not written its file yet)."""
        n = 0
        for pid in pids:
            try:
                with open(os.path.join(self.statsdir, "stats.%d" % pid)) as f:
                    m = re.search(r"^signatures=(\d+)", f.read(), re.M)
                    n += int(m.group(1)) if m else 0
            except OSError:
                pass
        return n

    def settled(self, pids, quiet=0.3, timeout=5.0):
        """signatures(pids) once it has not changed for `quiet` s (the shim writes its file
        at most every 100 ms while the counters move)."""
        end = time.time() + timeout
        last, since = self.signatures(pids), time.time()
        while time.time() < end:
            time.sleep(0.05)
            n = self.signatures(pids)
            if n != last:
                last, since = n, time.time()
            elif time.time() - since >= quiet:
                break
        return last


def tls_backend_conf(lab, warm_port, hs_port):
    """The backends: one nginx, HTTPS with required client certificates (the test CA), an
    ECDSA P-256 server certificate; "warm" allows keep-alive and resumption, "hs" neither."""
    common = ("ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3; "
              "ssl_client_certificate %s; ssl_verify_client on; "
              "location / { default_type text/plain; return 200 "
              "'backend ok verify=$ssl_client_verify proto=$ssl_protocol "
              "reused=$ssl_session_reused\\n'; }" % (lab.be_crt, lab.be_key, lab.ca_crt))
    return ("server { listen 127.0.0.1:%d ssl; keepalive_requests 100000000; "
            "keepalive_timeout 600s; ssl_session_cache shared:warm:4m; ssl_session_timeout 1h; "
            "ssl_session_tickets on; %s }\n"
            "server { listen 127.0.0.1:%d ssl; keepalive_timeout 0; ssl_session_cache off; "
            "ssl_session_tickets off; %s }" % (warm_port, common, hs_port, common))


def token_nginx_proxy_conf(lab, port, warm_port, hs_port):
    main = "".join("env %s;\n" % k for k in ("SOFTHSM2_CONF", "OPENSSL_CONF", "FGSHIM_MODULE",
                                               "FGSHIM_CONTROL", "FGSHIM_STATS"))
    tls = ("proxy_http_version 1.1; proxy_set_header Host %s; "
           "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
           "proxy_set_header X-Forwarded-Proto $scheme; "
           "proxy_ssl_certificate %s; proxy_ssl_certificate_key \"%s\"; "
           "proxy_ssl_trusted_certificate %s; proxy_ssl_verify on; proxy_ssl_name %s; "
           "proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.2 TLSv1.3; "
           % (BACKEND_NAME, lab.cert, lab.engine_key, lab.ca_crt, BACKEND_NAME))
    body = ("upstream warm { server 127.0.0.1:%d; keepalive 64; keepalive_requests 100000000; "
            "keepalive_timeout 600s; }\n"
            "upstream hs { server 127.0.0.1:%d; }\n"
            "server { listen 127.0.0.1:%d; server_name warm.bench; "
            "keepalive_requests 100000000; "
            "location / { proxy_pass https://warm; proxy_set_header Connection ''; %s "
            "proxy_ssl_session_reuse on; } }\n"
            "server { listen 127.0.0.1:%d; server_name hs.bench; keepalive_requests 100000000; "
            "location / { proxy_pass https://hs; proxy_set_header Connection ''; %s "
            "proxy_ssl_session_reuse off; } }"
            % (warm_port, hs_port, port, tls, port, tls))
    return main, body


def token_farmgated_conf(lab, port, warm_port, hs_port):
    def farm(name, be_port):
        return {"name": name,
                "servers": [{"address": "127.0.0.1", "httpsPort": be_port,
                             "hostName": BACKEND_NAME}],
                "protocol": {"preserveHostHeader": False, "clientCertHash": lab.sha1,
                             "backendCaFile": lab.ca_crt}}

    def rule(name):
        return {"name": "ARR_%s_loadbalance" % name, "patternSyntax": "Wildcard",
                "stopProcessing": True, "match": {"url": "*"},
                "conditions": [{"input": "{HTTP_HOST}", "pattern": name + ".bench"}],
                "action": {"type": "Rewrite", "url": "https://%s/{R:0}" % name}}

    return {"listeners": [{"address": "127.0.0.1", "port": port}],
            "log": {"access": "off"},
            "tokens": [{"name": "bench", "module": lab.shim,
                        "uri": "pkcs11:token=" + TOKEN_LABEL, "pinFile": lab.pin_file}],
            "webFarms": [farm("warm", warm_port), farm("hs", hs_port)],
            "rules": [rule("warm"), rule("hs")]}


def get_once(port, host, timeout=30):
    """One GET through a proxy: (status, body text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/check", headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


class Proxy:
    def __init__(self, name, port, proc, pids, worker):
        self.name, self.port, self.proc = name, port, proc
        self.pids = pids      # processes whose token signatures count
        self.worker = worker  # the process doing the work (CPU)

    def alive(self, what):
        if self.proc.poll() is not None:
            raise RuntimeError("%s exited (status %s) during %s" % (self.name, self.proc.returncode,
                                                                  what))


def wrk_start(port, seconds, conns, host, timeout=None):
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if timeout:
        cmd += ["--timeout", "%ds" % timeout]
    cmd += ["-H", "Host: " + host, "http://127.0.0.1:%d/bench" % port]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_finish(p, seconds):
    out, err = p.communicate(timeout=seconds + 60)
    return parse_wrk(out, err)


def machine_cpu():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def measured(lab, px, fn, backend_pids):
    """Runs fn() (a wrk result) counting px's token signatures and CPU time around it, the
    backend's CPU time and how busy the machine was."""
    s0 = lab.settled(px.pids)
    c0 = cpu_seconds(px.worker)
    b0 = sum(cpu_seconds(p) for p in backend_pids)
    m0 = machine_cpu()
    r = fn()
    m1 = machine_cpu()
    n = max(r["requests"], 1)
    r["cpu_us_per_req"] = (cpu_seconds(px.worker) - c0) * 1e6 / n
    r["backend_cpu_us_per_req"] = (sum(cpu_seconds(p) for p in backend_pids) - b0) * 1e6 / n
    r["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1)
    r["signatures"] = lab.settled(px.pids) - s0
    r["sig_per_1000"] = r["signatures"] * 1000.0 / max(r["requests"], 1)
    px.alive("the run")
    return r


def med(rs, key):
    return statistics.median(x[key] for x in rs)


def ratio_of(f, n):
    return f / n if n else float("nan")


def run_token(a, binary, outdir, tmp, procs):
    ctl = os.path.join(os.path.dirname(binary), "farmgatectl")
    shim = os.path.abspath(os.path.join(a.build, "tests", "libfgshim.so"))
    # make bench builds farmgated and farmgatectl (make all), not the test shim
    subprocess.run(["make", "--no-print-directory", "-C", os.path.dirname(HERE),
                    "O=" + os.path.abspath(a.build), shim], check=False)
    for p in (ctl, shim):
        if not os.path.exists(p):
            raise RuntimeError("%s is missing (make all unit)" % p)
    t0 = time.time()
    lab = TokenLab(tmp, ctl, shim)
    warm_port, hs_port, fg_port, ng_port = free_port(), free_port(), free_port(), free_port()
    backend = start_nginx(os.path.join(tmp, "backend-tls"),
                          tls_backend_conf(lab, warm_port, hs_port))
    procs.append(backend)
    main, body = token_nginx_proxy_conf(lab, ng_port, warm_port, hs_port)
    ngproxy = start_nginx(os.path.join(tmp, "nginx-token-proxy"), body, main=main,
                          env=clean_env(dict(lab.shim_env, OPENSSL_CONF=lab.openssl_conf)))
    procs.append(ngproxy)
    cfgpath = os.path.join(tmp, "farmgated-token.json")
    with open(cfgpath, "w") as f:
        json.dump(token_farmgated_conf(lab, fg_port, warm_port, hs_port), f)
    fglog = os.path.join(outdir, "farmgated-token.log")
    fg = subprocess.Popen([binary, "-c", cfgpath], stdout=subprocess.DEVNULL,
                          stderr=open(fglog, "w"), env=clean_env(lab.shim_env))
    procs.append(fg)
    for p in (warm_port, hs_port, fg_port, ng_port):
        wait_port(p, 20)
    ng_worker = nginx_worker(ngproxy.pid)
    be_pids = [backend.pid, nginx_worker(backend.pid)]
    proxies = {"farmgated": Proxy("farmgated", fg_port, fg, [fg.pid], fg.pid),
               "nginx": Proxy("nginx", ng_port, ngproxy, [ngproxy.pid, ng_worker], ng_worker)}
    # both proxies reach both backends with the token's certificate over TLS 1.3
    for px in proxies.values():
        for host in ("warm.bench", "hs.bench"):
            st, text = get_once(px.port, host)
            if st != 200 or "verify=SUCCESS" not in text or "proto=TLSv1.3" not in text:
                raise RuntimeError("%s, Host %s: expected 200 from the backend with a verified "
                                   "client certificate over TLS 1.3, got %d %r (logs: %s, %s)"
                                   % (px.name, host, st, text[:300], fglog,
                                      os.path.join(tmp, "nginx-token-proxy", "error.log")))
    print("token set-up %.1f s: RSA-2048 key on SoftHSM behind %s, certificate SHA-1 %s"
          % (time.time() - t0, os.path.basename(shim), lab.sha1), flush=True)
    names = list(proxies)

    def order(rnd):
        return names if rnd % 2 == 0 else list(reversed(names))

    # 1. warm: keep-alive, pooled and resumed upstream TLS
    for px in proxies.values():
        wrk(px.port, 2, 64, "warm.bench")
    warm = {n: [] for n in names}
    for rnd in range(a.rounds):
        for n in order(rnd):
            px = proxies[n]
            r = measured(lab, px, lambda: wrk(px.port, a.seconds, 64, "warm.bench"), be_pids)
            warm[n].append(r)
            print("warm  round %d %-9s %9.0f req/s  p99 %.3f ms  %.2f sig/1000 req  errors %d"
                  % (rnd + 1, n, r["rps"], r["p99"], r["sig_per_1000"], r["errors"]),
                  flush=True)

    # 2. handshake-bound: every request a full TLS handshake with a token signature
    hs = {n: [] for n in names}
    raw = []
    raw_seconds = max(1.0, a.seconds / 4.0)
    for rnd in range(a.rounds):
        rates = lab.raw_rate(raw_seconds)
        raw.append(rates)
        print("token round %d raw rate (farmgatectl token bench, 1 thread): RSA-PSS %.0f/s  "
              "RSA-PKCS1 %.0f/s" % (rnd + 1, rates["RSA-PSS-SHA256"], rates["RSA-PKCS1-SHA256"]),
              flush=True)
        for n in order(rnd):
            px = proxies[n]
            r = measured(lab, px, lambda: wrk(px.port, a.seconds, 16, "hs.bench"), be_pids)
            hs[n].append(r)
            print("hs    round %d %-9s %9.0f req/s  p99 %.3f ms  %.0f sig/1000 req  errors %d"
                  % (rnd + 1, n, r["rps"], r["p99"], r["sig_per_1000"], r["errors"]),
                  flush=True)

    # 2b. handshake-bound with a TPM-like token: the token, not the CPU, is the limit
    hs_tpm = {n: [] for n in names}
    raw_tpm = []
    try:
        lab.set_delay(TPM_MS)
        for rnd in range(a.rounds):
            rates = lab.raw_rate(raw_seconds)
            raw_tpm.append(rates)
            for n in order(rnd):
                px = proxies[n]
                r = measured(lab, px, lambda: wrk(px.port, a.seconds, 16, "hs.bench"), be_pids)
                hs_tpm[n].append(r)
                print("tpm   round %d %-9s %9.1f req/s (raw RSA-PSS %.1f/s)  p99 %.3f ms  "
                      "errors %d" % (rnd + 1, n, r["rps"], rates["RSA-PSS-SHA256"], r["p99"],
                                     r["errors"]), flush=True)
    finally:
        lab.set_delay(0)

    # 3. slow token: handshakes for "hs" wait 100 ms per signature while "warm" is served
    slow = {n: [] for n in names}
    try:
        for rnd in range(a.rounds):
            for n in order(rnd):
                px = proxies[n]
                lab.set_delay(0)
                base = wrk(px.port, 2, 4, "warm.bench")  # pools warm; baseline p99
                lab.set_delay(SLOW_MS)
                s0 = lab.settled(px.pids)
                load = wrk_start(px.port, a.seconds + 2, 8, "hs.bench", timeout=10)
                time.sleep(1)
                w = wrk(px.port, a.seconds, 4, "warm.bench")
                h = wrk_finish(load, a.seconds + 2)
                lab.set_delay(0)
                sigs = lab.settled(px.pids, quiet=0.5) - s0
                px.alive("the slow-token run")
                r = {"warm": w, "hs": h, "baseline_warm": base, "signatures": sigs}
                slow[n].append(r)
                print("slow  round %d %-9s warm p99 %.3f ms (%.3f ms before)  warm %.0f req/s  "
                      "hs %.1f req/s  errors warm %d hs %d"
                      % (rnd + 1, n, w["p99"], base["p99"], w["rps"], h["rps"], w["errors"],
                         h["errors"]), flush=True)
    finally:
        lab.set_delay(0)
    # farmgated logs its own signature counters when it stops: compare with the shim's
    shim_total = lab.settled([fg.pid])
    stop(fg)
    procs.remove(fg)
    own = log_problems(fglog, r"info: (token bench:|farm (warm|hs): )")
    t = summarize_token(lab, proxies, warm, hs, raw, slow, raw_seconds, fglog, tmp)
    raw_tpm_pss = statistics.median(x["RSA-PSS-SHA256"] for x in raw_tpm)
    t["tpm"] = {"sign_delay_ms": TPM_MS, "raw_pss": raw_tpm_pss, "runs": hs_tpm,
                "res": {n: {"rps": med(hs_tpm[n], "rps"), "p99_ms": med(hs_tpm[n], "p99"),
                            "of_raw_pss": med(hs_tpm[n], "rps") / raw_tpm_pss,
                            "errors": sum(x["errors"] for x in hs_tpm[n])} for n in names}}
    t["farmgated_exit"] = {"status": fg.returncode, "own_counters": own,
                           "shim_signatures_total": shim_total}
    return t


def log_problems(path, rx):
    """Lines of a log matching rx (errors, warnings), for the report."""
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\n") for l in f if re.search(rx, l)]
    except OSError:
        return []


def summarize_token(lab, proxies, warm, hs, raw, slow, raw_seconds, fglog, tmp):
    names = list(proxies)
    res = {"warm": {}, "hs": {}, "slow": {}}
    raw_pss = statistics.median(x["RSA-PSS-SHA256"] for x in raw)
    raw_pkcs1 = statistics.median(x["RSA-PKCS1-SHA256"] for x in raw)
    for n in names:
        w, h, s = warm[n], hs[n], slow[n]
        res["warm"][n] = {
            "rps": med(w, "rps"), "p50_ms": med(w, "p50"), "p99_ms": med(w, "p99"),
            "sig_per_1000": sum(x["signatures"] for x in w) * 1000.0 /
            max(sum(x["requests"] for x in w), 1),
            "signatures": sum(x["signatures"] for x in w),
            "cpu_us_per_req": med(w, "cpu_us_per_req"),
            "backend_cpu_us_per_req": med(w, "backend_cpu_us_per_req"),
            "machine_busy_pct": med(w, "machine_busy_pct"),
            "non2xx": sum(x["non2xx"] for x in w), "socket_errors": sum(x["socket_errors"] for x in w),
            "errors": sum(x["errors"] for x in w)}
        rps = med(h, "rps")
        res["hs"][n] = {
            "rps": rps, "p50_ms": med(h, "p50"), "p99_ms": med(h, "p99"),
            "of_raw_pss": rps / raw_pss, "of_raw_pkcs1": rps / raw_pkcs1,
            "sig_per_1000": sum(x["signatures"] for x in h) * 1000.0 /
            max(sum(x["requests"] for x in h), 1),
            "cpu_us_per_req": med(h, "cpu_us_per_req"),
            "backend_cpu_us_per_req": med(h, "backend_cpu_us_per_req"),
            "machine_busy_pct": med(h, "machine_busy_pct"),
            "non2xx": sum(x["non2xx"] for x in h), "socket_errors": sum(x["socket_errors"] for x in h),
            "errors": sum(x["errors"] for x in h)}
        res["slow"][n] = {
            "warm_p99_ms": statistics.median(x["warm"]["p99"] for x in s),
            "warm_p50_ms": statistics.median(x["warm"]["p50"] for x in s),
            "warm_rps": statistics.median(x["warm"]["rps"] for x in s),
            "baseline_warm_p99_ms": statistics.median(x["baseline_warm"]["p99"] for x in s),
            "hs_rps": statistics.median(x["hs"]["rps"] for x in s),
            "hs_p99_ms": statistics.median(x["hs"]["p99"] for x in s),
            "signatures": sum(x["signatures"] for x in s),
            "warm_errors": sum(x["warm"]["errors"] for x in s),
            "hs_errors": sum(x["hs"]["errors"] for x in s),
            "hs_non2xx": sum(x["hs"]["non2xx"] for x in s),
            "hs_socket_errors": sum(x["hs"]["socket_errors"] for x in s)}
    ratio = {sc: {k: ratio_of(res[sc]["farmgated"][k], res[sc]["nginx"][k])
                  for k in res[sc]["farmgated"] if isinstance(res[sc]["farmgated"][k], float)}
             for sc in res}
    logs = {"farmgated": log_problems(fglog, r" (error|warning): |Sanitizer|runtime error"),
            "nginx": log_problems(os.path.join(tmp, "nginx-token-proxy", "error.log"),
                                  r"\[(warn|error|crit|alert|emerg)\]|fgshim:")}
    return {"res": res, "ratio": ratio, "raw": {"RSA-PSS-SHA256": raw_pss,
                                                 "RSA-PKCS1-SHA256": raw_pkcs1,
                                                 "seconds_per_mechanism": raw_seconds,
                                                 "runs": raw},
            "runs": {"warm": warm, "hs": hs, "slow": slow}, "logs": logs,
            "sha1": lab.sha1}


def fmt_ratio(r):
    return "%.2f" % r if r >= 0.1 else "%.2g" % r


def token_md(t, a):
    """The token scenarios' tables for results.md."""
    f = lambda sc, k: t["res"][sc]["farmgated"][k]  # noqa: E731
    n = lambda sc, k: t["res"][sc]["nginx"][k]  # noqa: E731

    def row(label, sc, k, fmt, r=True):
        fv, nv = f(sc, k), n(sc, k)
        rv = ratio_of(fv, nv) if r and isinstance(fv, float) else None
        return "| %s | %s | %s | %s |" % (label, fmt % fv, fmt % nv,
                                          fmt_ratio(rv) if rv is not None and nv else "")

    def met(ok):
        return "met" if ok else "NOT met"

    raw = t["raw"]
    w, h, s = t["res"]["warm"], t["res"]["hs"], t["res"]["slow"]
    L = [
        "## Token identity: upstream HTTPS, client-certificate key on a PKCS#11 token (issue 3)",
        "",
        "Same run, same machine. One SoftHSM token (RSA-2048 key generated on it by "
        "farmgatectl; CSR signed by a test CA; only the public certificate on disk), reached by "
        "both proxies through the test shim build/tests/libfgshim.so (which counts C_Sign "
        "calls per process; signatures below are the shim's counts, read before and after each "
        "measured run). farmgated: tokens[] + clientCertHash (SHA-1 %s), its signer thread. "
        "nginx: proxy_ssl_certificate_key \"engine:pkcs11:...\" (libp11's engine), one worker. "
        "Backends: one Debian nginx, HTTPS requiring client certificates, ECDSA P-256 server "
        "certificate, TLS 1.2/1.3; \"warm\" keeps connections alive and resumes sessions, "
        "\"hs\" closes every connection and allows no resumption (keepalive_timeout 0, no "
        "session cache, no tickets). wrk -t1, %d rounds of %d s alternating, medians. "
        "%d cores shared by wrk, the backend, the proxy under test and the token (SoftHSM "
        "signs on the proxy's own CPU time): absolute figures are this machine's, the "
        "ratios are the point." % (t["sha1"], a.rounds, a.seconds, os.cpu_count()),
        "",
        "### 1. Warm farm (wrk -c64, Host warm.bench)",
        "",
        "Keep-alive clients; upstream connections pooled and TLS sessions resumed, so after "
        "the 2 s warm-up no request should need a token signature.",
        "",
        "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
        row("requests/s", "warm", "rps", "%.0f"),
        row("p50 latency (ms)", "warm", "p50_ms", "%.3f"),
        row("p99 latency (ms)", "warm", "p99_ms", "%.3f"),
        row("token signatures per 1000 requests (target 0)", "warm", "sig_per_1000", "%.3f",
            r=False),
        row("proxy CPU per request (us)", "warm", "cpu_us_per_req", "%.1f"),
        row("backend CPU per request (us)", "warm", "backend_cpu_us_per_req", "%.1f"),
        row("machine CPU busy during the runs (%)", "warm", "machine_busy_pct", "%.0f"),
        "| non-2xx responses / socket errors (all rounds) | %d / %d | %d / %d | |" % (
            f("warm", "non2xx"), f("warm", "socket_errors"), n("warm", "non2xx"),
            n("warm", "socket_errors")),
        "",
    ]
    L += ["Target: zero signatures per 1000 warm requests after warm-up: farmgated %s "
          "(%d signatures in all rounds), nginx %s (%d)." % (
              met(f("warm", "signatures") == 0), f("warm", "signatures"),
              met(n("warm", "signatures") == 0), n("warm", "signatures")), ""]
    L += [
        "### 2. Handshake-bound (wrk -c16, Host hs.bench)",
        "",
        "Every request is a new upstream connection with a full TLS handshake, and the "
        "client-certificate signature is made on the token, so requests/s is bounded by the "
        "token's signature rate. The raw rate is `farmgatectl token bench` on the same key "
        "through the same shim, one thread signing in a loop with nothing else running "
        "(%g s per mechanism, each round, median). TLS 1.3 signs with RSA-PSS "
        "(rsa_pss_rsae_sha256): that is the reference rate." % raw["seconds_per_mechanism"],
        "",
        "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
        "| token raw rate, RSA-PSS SHA-256 (signatures/s) | %.0f | (same token) | |"
        % raw["RSA-PSS-SHA256"],
        "| token raw rate, RSA PKCS#1 v1.5 SHA-256 (signatures/s) | %.0f | (same token) | |"
        % raw["RSA-PKCS1-SHA256"],
        row("requests/s", "hs", "rps", "%.0f"),
        row("requests/s / raw RSA-PSS rate (target >= 0.90)", "hs", "of_raw_pss", "%.2f"),
        row("requests/s / raw PKCS#1 rate", "hs", "of_raw_pkcs1", "%.2f"),
        row("p50 latency (ms)", "hs", "p50_ms", "%.3f"),
        row("p99 latency (ms)", "hs", "p99_ms", "%.3f"),
        row("token signatures per 1000 requests (1000 = one full handshake each)", "hs",
            "sig_per_1000", "%.0f", r=False),
        row("proxy CPU per request (us; SoftHSM signs inside the proxy process, so this "
            "includes the signature)", "hs", "cpu_us_per_req", "%.1f"),
        row("backend CPU per request (us)", "hs", "backend_cpu_us_per_req", "%.1f"),
        row("machine CPU busy during the runs (%)", "hs", "machine_busy_pct", "%.0f"),
        "| non-2xx responses / socket errors (all rounds) | %d / %d | %d / %d | |" % (
            f("hs", "non2xx"), f("hs", "socket_errors"), n("hs", "non2xx"),
            n("hs", "socket_errors")),
        "",
        "Target: handshake-bound requests/s at >= 0.90 of the token's raw RSA-PSS rate: "
        "farmgated %s (%.2f), nginx %s (%.2f). The raw rate is measured with the CPU to "
        "itself; during the runs wrk, the backend's handshakes and the proxy's own TLS work "
        "share the same %d cores with the token (machine CPU busy %.0f%% / %.0f%%), so here "
        "the limit is CPU, not the token: a ratio r means the token was busy r of the time. "
        "The proxy's handshake work besides the signature (key exchange, verifying the "
        "backend's chain, OpenSSL 3's per-handshake overhead) and the backend's handshake "
        "each cost more CPU than the signature does (CPU rows above; one RSA-PSS signature "
        "is about %.2f ms of CPU)." % (
            met(f("hs", "of_raw_pss") >= 0.9), f("hs", "of_raw_pss"),
            met(n("hs", "of_raw_pss") >= 0.9), n("hs", "of_raw_pss"), os.cpu_count(),
            f("hs", "machine_busy_pct"), n("hs", "machine_busy_pct"),
            1000.0 / raw["RSA-PSS-SHA256"]),
        "",
        "### 2b. Handshake-bound with a TPM-like token (%d ms per signature)" % t["tpm"]["sign_delay_ms"],
        "",
        "The same runs with the shim adding %d ms to each signature, as slow as a TPM (60-90 "
        "signatures/s measured here with swtpm): now the token, not the CPU, is the limit, "
        "which is the case the target is about. Raw rate: `farmgatectl token bench` through "
        "the same shim." % t["tpm"]["sign_delay_ms"],
        "",
        "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
        "| token raw rate, RSA-PSS SHA-256 (signatures/s) | %.1f | (same token) | |"
        % t["tpm"]["raw_pss"],
        "| requests/s | %.1f | %.1f | %s |" % (
            t["tpm"]["res"]["farmgated"]["rps"], t["tpm"]["res"]["nginx"]["rps"],
            fmt_ratio(ratio_of(t["tpm"]["res"]["farmgated"]["rps"],
                               t["tpm"]["res"]["nginx"]["rps"]))),
        "| requests/s / raw RSA-PSS rate (target >= 0.90) | %.2f | %.2f | |" % (
            t["tpm"]["res"]["farmgated"]["of_raw_pss"], t["tpm"]["res"]["nginx"]["of_raw_pss"]),
        "| p99 latency (ms) | %.1f | %.1f | |" % (
            t["tpm"]["res"]["farmgated"]["p99_ms"], t["tpm"]["res"]["nginx"]["p99_ms"]),
        "| errors (all rounds) | %d | %d | |" % (
            t["tpm"]["res"]["farmgated"]["errors"], t["tpm"]["res"]["nginx"]["errors"]),
        "",
        "Target with a token-bound handshake rate: farmgated %s (%.2f), nginx %s (%.2f)." % (
            met(t["tpm"]["res"]["farmgated"]["of_raw_pss"] >= 0.9),
            t["tpm"]["res"]["farmgated"]["of_raw_pss"],
            met(t["tpm"]["res"]["nginx"]["of_raw_pss"] >= 0.9),
            t["tpm"]["res"]["nginx"]["of_raw_pss"]),
        "",
        "### 3. Slow token (%d ms per signature)" % SLOW_MS,
        "",
        "The shim's control file gets sign_delay_ms=%d (both proxies see it). wrk -c8 on "
        "hs.bench keeps handshakes waiting on the slow token; 1 s later and at the same time, "
        "wrk -c4 --latency on warm.bench for %d s: its upstream connections are pooled and "
        "its sessions resumable, so it needs no signature. Before each run, 2 s of the warm "
        "load alone without the delay (pools warm; the \"before\" p99). Then the delay is "
        "reset." % (SLOW_MS, a.seconds),
        "",
        "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
        row("warm p99 latency during the slow handshakes (ms)", "slow", "warm_p99_ms", "%.3f"),
        row("warm p50 latency during the slow handshakes (ms)", "slow", "warm_p50_ms", "%.3f"),
        row("warm requests/s during the slow handshakes", "slow", "warm_rps", "%.0f"),
        row("warm p99 latency before, no slow load (ms)", "slow", "baseline_warm_p99_ms",
            "%.3f"),
        row("hs requests/s at %d ms per signature" % SLOW_MS, "slow", "hs_rps", "%.1f"),
        row("hs p99 latency (ms)", "slow", "hs_p99_ms", "%.0f"),
        "| warm errors / hs non-2xx / hs socket errors (all rounds) | %d / %d / %d | "
        "%d / %d / %d | |" % (f("slow", "warm_errors"), f("slow", "hs_non2xx"),
                              f("slow", "hs_socket_errors"), n("slow", "warm_errors"),
                              n("slow", "hs_non2xx"), n("slow", "hs_socket_errors")),
        "",
        "Target: warm p99 unaffected by the slow token. farmgated: %.3f ms during vs %.3f ms "
        "before; nginx: %.3f ms during vs %.3f ms before (its single worker runs the "
        "engine's C_Sign on its event loop and stalls %d ms per handshake). Both proxies still do the rest of each handshake's TLS "
        "work on their event loop." % (
            f("slow", "warm_p99_ms"), f("slow", "baseline_warm_p99_ms"),
            n("slow", "warm_p99_ms"), n("slow", "baseline_warm_p99_ms"), SLOW_MS),
        "",
    ]
    ex = t.get("farmgated_exit")
    if ex:
        L.append("farmgated's own counters when it stopped (exit status %s; the shim counted %d "
                 "signatures in its process over the whole run, warm-ups included):" % (
                     ex["status"], ex["shim_signatures_total"]))
        L.append("")
        L += ["    " + l.split("info: ", 1)[-1] for l in ex["own_counters"]]
        L.append("")
    for who in ("farmgated", "nginx"):
        lines = t["logs"][who]
        if lines:
            L.append("%s logged %d warning/error line%s during the token scenarios, e.g.:" % (
                who, len(lines), "" if len(lines) == 1 else "s"))
            L.append("")
            L += ["    " + l[:300] for l in lines[:5]]
            L.append("")
    return L


# ---- front-end TLS: HTTPS listeners' handshake rates (issue 4) -----------------------------

FRONT_NAME = "www.bench.test"  # the front certificates' SAN
FRONT_KEY_TYPES = ("rsa2048", "p256")
FRONT_TOKEN_LABEL, FRONT_TOKEN_KEY = "front", "front-rsa"
FRONT_TLS = ("ssl_protocols TLSv1.2 TLSv1.3; ssl_ecdh_curve X25519:prime256v1:secp384r1; "
             "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
             "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
             "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305; "
             "ssl_prefer_server_ciphers on; ssl_session_cache shared:front:10m; "
             "ssl_session_timeout 1h; ssl_session_tickets on; ")


def operator_pki(directory):
    """tests/integration/tlsbench_pki.py (stdlib + openssl CLI), shared with the testssl test."""
    sys.path.insert(0, os.path.join(HERE, "integration"))
    try:
        import tlsbench_pki
    finally:
        sys.path.pop(0)
    return tlsbench_pki.OperatorPki(directory)


def s_time(port, mode, seconds, clients):
    """`clients` concurrent `openssl s_time -connect 127.0.0.1:<port> -<mode> -time <seconds>
    -www /bench` (mode "new": a full handshake per connection; "reuse": every connection
    resumes the previous one's session, TLS 1.3 tickets included). Each connection is one TLS
    handshake, one `GET /bench HTTP/1.0` through to the backend, its response read to the
    end, then a close. s_time prints one character per connection: '*' full, 'r' resumed.
    Returns connections, handshakes/s (the sum over clients of connections / that client's
    wall time), resumed and full counts, bytes per connection and failed clients (s_time
    stops at the first failed connection and prints no count)."""
    procs = []
    for _ in range(clients):
        t0 = time.monotonic()
        p = subprocess.Popen([OPENSSL, "s_time", "-connect", "127.0.0.1:%d" % port, "-" + mode,
                              "-time", str(seconds), "-www", "/bench"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=clean_env())
        procs.append((p, t0))
    r = {"connections": 0, "rate": 0.0, "resumed": 0, "full": 0, "failed_clients": 0,
         "bytes_per_conn": 0, "errors": []}
    for p, t0 in procs:
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        wall = time.monotonic() - t0
        m = re.search(r"^(\d+) connections in [\d.]+s;", out, re.M)
        b = re.search(r"^\d+ connections in \d+ real seconds, (\d+) bytes read per connection",
                      out, re.M)
        marks = "".join(l for l in out.splitlines() if l and re.fullmatch(r"[*rt3]+", l))
        if p.returncode != 0 or not m:
            r["failed_clients"] += 1
            r["errors"].append((out[-300:] + err[-300:]).replace("\n", " ")[-400:])
            continue
        n = int(m.group(1))
        r["connections"] += n
        r["rate"] += n / wall
        r["resumed"] += marks.count("r")
        r["full"] += n - marks.count("r")
        r["bytes_per_conn"] = int(b.group(1)) if b else 0
    return r


def https_check(port, ca):
    """One GET /bench over HTTPS (certificate verified for FRONT_NAME against ca): (status,
    body, TLS version, cipher)."""
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=FRONT_NAME) as s:
            c = http.client.HTTPConnection(FRONT_NAME)
            c.sock = s
            c.request("GET", "/bench", headers={"Host": FRONT_NAME})
            resp = c.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace"), s.version(), s.cipher()[0]


def front_nginx_conf(be_port, listeners):
    """nginx as the TLS front: one server per (port, ServerCert), Mozilla intermediate
    settings limited to ECDHE (farmgated's profile), server cipher order, session cache and
    tickets; the same pooled backend as farmgated."""
    servers = "".join(
        "server { listen 127.0.0.1:%d ssl; ssl_certificate %s; ssl_certificate_key %s; %s"
        "keepalive_requests 100000; location / { proxy_pass http://farm; "
        "proxy_http_version 1.1; proxy_set_header Connection ''; "
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
        "proxy_set_header X-Forwarded-Proto $scheme; } }\n"
        % (port, cert.chain, cert.key, FRONT_TLS) for port, cert in listeners)
    return ("upstream farm { server 127.0.0.1:%d; keepalive 64; keepalive_requests 100000; }\n"
            % be_port) + servers


def front_farmgated_conf(be_port, listeners, tokens=None):
    """farmgated with one HTTPS listener per (port, ssl certificate entry); every request
    goes to the backend farm (no Host condition: s_time sends none)."""
    cfg = {"listeners": [{"address": "127.0.0.1", "port": port,
                          "ssl": {"certificates": [entry], "clientCertificates": "Ignore",
                                  "sessionTickets": True}}
                         for port, entry in listeners],
           "log": {"access": "off"},
           "webFarms": [{"name": "bench",
                         "servers": [{"address": "127.0.0.1", "httpPort": be_port}]}],
           "rules": [{"name": "ARR_bench_loadbalance", "patternSyntax": "Wildcard",
                      "stopProcessing": True, "match": {"url": "*"},
                      "action": {"type": "Rewrite", "url": "http://bench/{R:0}"}}]}
    if tokens:
        cfg["tokens"] = tokens
    return cfg


def front_token(tmp, ctl_bin, shim, pki):
    """A SoftHSM token with an RSA-2048 key generated on it (farmgatectl keygen), its CSR
    signed by the operator PKI as a server certificate for FRONT_NAME and imported beside
    the key (only the public certificate is on disk). farmgated reaches it through the test
    shim when that is built (which counts signatures per process), else SoftHSM directly.
    Returns what the farmgated configuration and the run need."""
    d = os.path.join(tmp, "front-token")
    tokens = os.path.join(d, "tokens")
    stats = os.path.join(d, "stats")
    for x in (d, tokens, stats):
        os.makedirs(x, exist_ok=True)
    conf = os.path.join(d, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                "slots.removable = false\n" % tokens)
    control = os.path.join(d, "shim.ctl")
    with open(control, "w") as f:
        f.write("sign_delay_ms=0\n")
    with open(control + ".state", "w") as f:
        f.write("pin_failures=0\n")
    env = clean_env({"SOFTHSM2_CONF": conf, "FG_PIN": USER_PIN, "FG_SO_PIN": SO_PIN})

    def ctl(args, token=True):
        cmd = [ctl_bin, "token"] + args + ["--module", SOFTHSM]
        if token:
            cmd += ["--token", "pkcs11:token=" + FRONT_TOKEN_LABEL, "--pin-env", "FG_PIN"]
        return run_cmd(cmd, env=env, cwd=d)

    out = ctl(["init", "--label", FRONT_TOKEN_LABEL, "--so-pin-env", "FG_SO_PIN",
               "--pin-env", "FG_PIN"], token=False)
    if "initialised token" not in out:
        raise RuntimeError("farmgatectl token init: " + out)
    ctl(["keygen", "--type", "rsa2048", "--label", FRONT_TOKEN_KEY])
    csr, crt = os.path.join(d, "front.csr"), os.path.join(d, "front.crt")
    ctl(["csr", "--key-label", FRONT_TOKEN_KEY, "--subject", "/CN=" + FRONT_NAME, "--out", csr])
    pki.sign_server_csr(csr, crt, [FRONT_NAME], key_type="rsa2048")
    ctl(["import-cert", crt, "--label", FRONT_TOKEN_KEY])
    pin_file = os.path.join(d, "user.pin")
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(USER_PIN + "\n")
    use_shim = bool(shim and os.path.exists(shim))
    proc_env = {"SOFTHSM2_CONF": conf}
    if use_shim:
        proc_env.update({"FGSHIM_MODULE": SOFTHSM, "FGSHIM_CONTROL": control,
                         "FGSHIM_STATS": os.path.join(stats, "stats.%p")})
    return {"cert": crt, "sha1": pem_sha1(crt), "shim": use_shim, "stats": stats,
            "env": proc_env,
            "token_cfg": {"name": "front", "module": shim if use_shim else SOFTHSM,
                          "uri": "pkcs11:token=" + FRONT_TOKEN_LABEL, "pinFile": pin_file}}


def shim_signatures(stats_dir, pid):
    """The shim's signature count in process pid (0 before its first write); the shim
    rewrites its file at most every 100 ms, so wait until it holds still."""
    def read():
        try:
            with open(os.path.join(stats_dir, "stats.%d" % pid)) as f:
                m = re.search(r"^signatures=(\d+)", f.read(), re.M)
                return int(m.group(1)) if m else 0
        except OSError:
            return 0
    last, since, end = read(), time.time(), time.time() + 5
    while time.time() < end:
        time.sleep(0.05)
        n = read()
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= 0.3:
            break
    return last


FRONT_SCENARIOS = (  # key, label, key type, s_time mode
    ("rsa2048-full", "RSA-2048, full handshake", "rsa2048", "new"),
    ("rsa2048-resumed", "RSA-2048, resumed (TLS 1.3 ticket)", "rsa2048", "reuse"),
    ("p256-full", "ECDSA P-256, full handshake", "p256", "new"),
    ("p256-resumed", "ECDSA P-256, resumed (TLS 1.3 ticket)", "p256", "reuse"),
)


def run_front_tls(a, binary, outdir, tmp, procs):
    """Handshake rates of HTTPS listeners, farmgated vs nginx, same certificates and keys
    (files), same backend, same client load; then farmgated with the key on a token."""
    secs, clients = a.front_seconds, a.front_clients
    t0 = time.time()
    pki = operator_pki(os.path.join(tmp, "front-pki"))
    certs = {kt: pki.server_cert("front-" + kt, [FRONT_NAME], key_type=kt)
             for kt in FRONT_KEY_TYPES}
    be_port = free_port()
    ports = {(who, kt): free_port() for who in ("farmgated", "nginx") for kt in FRONT_KEY_TYPES}
    backend = start_nginx(os.path.join(tmp, "front-backend"),
                          "server { listen 127.0.0.1:%d; keepalive_requests 100000; "
                          "location / { return 200 'hello from the bench backend\\n'; } }"
                          % be_port)
    procs.append(backend)
    ngproxy = start_nginx(os.path.join(tmp, "nginx-front"), front_nginx_conf(
        be_port, [(ports[("nginx", kt)], certs[kt]) for kt in FRONT_KEY_TYPES]))
    procs.append(ngproxy)
    cfgpath = os.path.join(tmp, "farmgated-front.json")
    with open(cfgpath, "w") as f:
        json.dump(front_farmgated_conf(be_port, [
            (ports[("farmgated", kt)], {"certificateFile": certs[kt].chain,
                                        "keyFile": certs[kt].key})
            for kt in FRONT_KEY_TYPES]), f)
    fglog = os.path.join(outdir, "farmgated-front.log")
    fg = subprocess.Popen([binary, "-c", cfgpath], stdout=subprocess.DEVNULL,
                          stderr=open(fglog, "w"), env=clean_env())
    procs.append(fg)
    try:
        for p in [be_port] + list(ports.values()):
            wait_port(p, 20)
    except RuntimeError:
        if fg.poll() is not None:
            raise RuntimeError("farmgated exited (status %s) at start with HTTPS listeners: %s"
                               % (fg.returncode, open(fglog, errors="replace").read()[-600:]))
        raise
    pids = {"farmgated": fg.pid, "nginx": nginx_worker(ngproxy.pid)}
    check = {}
    for (who, kt), port in sorted(ports.items()):
        st, body, ver, cipher = https_check(port, pki.root)
        if st != 200 or "hello from the bench backend" not in body:
            raise RuntimeError("%s's %s listener: expected 200 from the backend, got %d %r"
                               % (who, kt, st, body[:200]))
        check["%s/%s" % (who, kt)] = "%s %s" % (ver, cipher)
    print("front TLS set-up %.1f s; %s" % (time.time() - t0, ", ".join(
        "%s: %s" % kv for kv in sorted(check.items()))), flush=True)
    names = ["farmgated", "nginx"]

    def order(rnd):
        return names if rnd % 2 == 0 else list(reversed(names))

    def measure(who, pid, port, mode, proc):
        c0, m0 = cpu_seconds(pid), machine_cpu()
        r = s_time(port, mode, secs, clients)
        m1 = machine_cpu()
        r["cpu_us_per_hs"] = (cpu_seconds(pid) - c0) * 1e6 / max(r["connections"], 1)
        r["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1)
        if proc.poll() is not None:
            raise RuntimeError("%s exited (status %s) during the front TLS runs"
                               % (who, proc.returncode))
        return r

    procs_of = {"farmgated": fg, "nginx": ngproxy}
    for who in names:  # warm-up: pools to the backend, caches
        for kt in FRONT_KEY_TYPES:
            s_time(ports[(who, kt)], "new", 1, 1)
    runs = {sc[0]: {n: [] for n in names} for sc in FRONT_SCENARIOS}
    for rnd in range(a.rounds):
        for key, label, kt, mode in FRONT_SCENARIOS:
            for who in order(rnd):
                r = measure(who, pids[who], ports[(who, kt)], mode, procs_of[who])
                runs[key][who].append(r)
                print("front round %d %-16s %-9s %7.0f handshakes/s  cpu %6.0f us/hs  "
                      "resumed %d/%d  failed clients %d" % (
                          rnd + 1, key, who, r["rate"], r["cpu_us_per_hs"], r["resumed"],
                          r["connections"], r["failed_clients"]), flush=True)

    # the key on a token (certificateHash): its own farmgated, so a failure here leaves the
    # figures above standing; nginx keeps its RSA-2048 key in a file
    tok = {"runs": {n: [] for n in names}}
    fg_tok = None
    try:
        ctl = os.path.join(os.path.dirname(binary), "farmgatectl")
        shim = os.path.abspath(os.path.join(a.build, "tests", "libfgshim.so"))
        if not os.path.exists(shim):
            subprocess.run(["make", "--no-print-directory", "-C", os.path.dirname(HERE),
                            "O=" + os.path.abspath(a.build), shim], check=False)
        lab = front_token(tmp, ctl, shim, pki)
        tok.update({"sha1": lab["sha1"], "shim": lab["shim"]})
        tok_port = free_port()
        tcfg = front_farmgated_conf(be_port, [(tok_port, {
            "certificateHash": lab["sha1"], "certificateToken": "front", "chainFile": pki.ca})],
            tokens=[lab["token_cfg"]])
        tcfgpath = os.path.join(tmp, "farmgated-front-token.json")
        with open(tcfgpath, "w") as f:
            json.dump(tcfg, f)
        toklog = os.path.join(outdir, "farmgated-front-token.log")
        fg_tok = subprocess.Popen([binary, "-c", tcfgpath], stdout=subprocess.DEVNULL,
                                  stderr=open(toklog, "w"), env=clean_env(lab["env"]))
        procs.append(fg_tok)
        try:
            wait_port(tok_port, 20)
        except RuntimeError:
            raise RuntimeError("farmgated with a token certificate did not start (status %s): %s"
                               % (fg_tok.poll(), open(toklog, errors="replace").read()[-600:]))
        st, body, ver, cipher = https_check(tok_port, pki.root)
        if st != 200:
            raise RuntimeError("token listener: expected 200, got %d %r" % (st, body[:200]))
        tok["check"] = "%s %s" % (ver, cipher)
        s_time(tok_port, "new", 1, 1)
        tpids = {"farmgated": fg_tok.pid, "nginx": pids["nginx"]}
        tports = {"farmgated": tok_port, "nginx": ports[("nginx", "rsa2048")]}
        tprocs = {"farmgated": fg_tok, "nginx": ngproxy}
        for rnd in range(a.rounds):
            for who in order(rnd):
                s0 = shim_signatures(lab["stats"], fg_tok.pid) if who == "farmgated" else 0
                r = measure(who, tpids[who], tports[who], "new", tprocs[who])
                if who == "farmgated" and lab["shim"]:
                    r["signatures"] = shim_signatures(lab["stats"], fg_tok.pid) - s0
                tok["runs"][who].append(r)
                print("front round %d %-16s %-9s %7.0f handshakes/s  cpu %6.0f us/hs%s" % (
                    rnd + 1, "token-full", who, r["rate"], r["cpu_us_per_hs"],
                    "  signatures %d" % r["signatures"] if "signatures" in r else ""),
                    flush=True)
    except Exception as e:  # noqa: the file-key figures still get written
        traceback.print_exc()
        tok["error"] = str(e)
    finally:
        if fg_tok is not None:
            stop(fg_tok)
            procs.remove(fg_tok)
    stop(fg)
    procs.remove(fg)
    for p in (ngproxy, backend):
        stop(p)
        procs.remove(p)
    res = {}
    for key, label, kt, mode in FRONT_SCENARIOS:
        res[key] = {n: front_summary(runs[key][n]) for n in names}
    if tok["runs"]["farmgated"] and tok["runs"]["nginx"] and "error" not in tok:
        tok["res"] = {n: front_summary(tok["runs"][n]) for n in names}
        if lab["shim"]:
            tok["res"]["farmgated"]["signatures_per_hs"] = (
                sum(x.get("signatures", 0) for x in tok["runs"]["farmgated"]) /
                max(sum(x["connections"] for x in tok["runs"]["farmgated"]), 1))
    logs = {"farmgated": log_problems(fglog, r" (error|warning): |Sanitizer|runtime error"),
            "nginx": log_problems(os.path.join(tmp, "nginx-front", "error.log"),
                                  r"\[(warn|error|crit|alert|emerg)\]")}
    return {"res": res, "runs": runs, "token": tok, "check": check, "logs": logs,
            "seconds": secs, "clients": clients, "fg_exit": fg.returncode,
            "elapsed_s": round(time.time() - t0, 1),
            "openssl": run_cmd([OPENSSL, "version"]).strip()}


def front_summary(rs):
    conns = sum(x["connections"] for x in rs)
    return {"rate": statistics.median(x["rate"] for x in rs),
            "cpu_us_per_hs": statistics.median(x["cpu_us_per_hs"] for x in rs),
            "machine_busy_pct": statistics.median(x["machine_busy_pct"] for x in rs),
            "connections": conns, "resumed": sum(x["resumed"] for x in rs),
            "resumed_pct": 100.0 * sum(x["resumed"] for x in rs) / max(conns, 1),
            "failed_clients": sum(x["failed_clients"] for x in rs),
            "bytes_per_conn": rs[-1]["bytes_per_conn"] if rs else 0,
            "errors": [e for x in rs for e in x["errors"]][:3]}


def front_md(t, a):
    """The front TLS table for results.md."""
    L = ["## HTTPS listeners: handshake rates (issue 4)", "",
         "Same run, same machine. Each connection: a TLS handshake, one `GET /bench HTTP/1.0` "
         "through the proxy to the same plain-HTTP nginx backend (pooled keep-alive upstream "
         "connections for both proxies), the response read to the end, close. Client: %d "
         "`openssl s_time` processes at once (%s; each runs one connection at a time; `-new`: "
         "a full handshake every time, `-reuse`: every connection resumes the previous one's "
         "session, with TLS 1.3 that is a ticket, PSK with (EC)DHE), %d s each, %d rounds "
         "alternating farmgated and nginx, medians. TLS 1.3 is negotiated (X25519). Both "
         "proxies have the same certificate files (certificate + issuing CA, key in a file, "
         "90-day certificates from a test PKI made for the run), one worker, ECDHE AEAD "
         "ciphers with server order, tickets and a session cache. handshakes/s is the sum "
         "over the clients of connections / wall time; proxy CPU is the proxy process's "
         "utime+stime per handshake. The clients' own TLS work shares the %d cores with the "
         "proxy and the backend, so handshakes/s is this machine's; CPU per handshake and "
         "the ratios are the comparable figures."
         % (t["clients"], t["openssl"], t["seconds"], a.rounds, os.cpu_count()), "",
         "| scenario | farmgated handshakes/s | nginx handshakes/s | farmgated/nginx | "
         "farmgated CPU per handshake (us) | nginx CPU per handshake (us) | "
         "CPU farmgated/nginx | resumed (farmgated / nginx) | failed clients |",
         "|---|---|---|---|---|---|---|---|---|"]

    def row(label, f, n, resumed=True):
        return "| %s | %.0f | %.0f | %s | %.0f | %.0f | %s | %s | %d / %d |" % (
            label, f["rate"], n["rate"], fmt_ratio(ratio_of(f["rate"], n["rate"])),
            f["cpu_us_per_hs"], n["cpu_us_per_hs"],
            fmt_ratio(ratio_of(f["cpu_us_per_hs"], n["cpu_us_per_hs"])),
            "%.0f%% / %.0f%%" % (f["resumed_pct"], n["resumed_pct"]) if resumed else "",
            f["failed_clients"], n["failed_clients"])

    for key, label, kt, mode in FRONT_SCENARIOS:
        L.append(row(label, t["res"][key]["farmgated"], t["res"][key]["nginx"]))
    tok = t["token"]
    if "res" in tok:
        L.append(row("RSA-2048, full handshake, **farmgated: key on a SoftHSM token** "
                     "(certificateHash) vs **nginx: key in a file**", tok["res"]["farmgated"],
                     tok["res"]["nginx"], resumed=False))
    L += ["", "Every connection got the backend's whole response through both proxies: s_time "
          "read %s bytes per connection from farmgated and %s from nginx (status line, "
          "headers and the 29-byte body; the proxies' headers differ), and before the runs one "
          "verified HTTPS GET per listener returned 200 with the backend's body (%s). s_time "
          "runs -time N until the wall clock passes a whole second, so one run lasts N to N+1 s."
          % ("/".join(str(t["res"][sc[0]]["farmgated"]["bytes_per_conn"])
                      for sc in FRONT_SCENARIOS),
             "/".join(str(t["res"][sc[0]]["nginx"]["bytes_per_conn"]) for sc in FRONT_SCENARIOS),
             "; ".join("%s %s" % kv for kv in sorted(t["check"].items())))]
    if "res" in tok:
        f = tok["res"]["farmgated"]
        sig = ("; the shim counted %.2f token signatures per handshake"
               % f["signatures_per_hs"]) if "signatures_per_hs" in f else ""
        L += ["", "Token row: farmgated's server key was generated on a SoftHSM token "
              "(farmgatectl keygen, certificate SHA-1 %s imported beside it); every full "
              "handshake signs on the token (RSA-PSS, on farmgated's signer thread; SoftHSM "
              "runs in farmgated's process, so its CPU is in farmgated's column)%s. nginx's "
              "figure is the same RSA-2048 file-key listener as the first row, measured "
              "again alternating with the token runs." % (tok.get("sha1"), sig)]
    elif tok.get("error"):
        L += ["", "Token row: FAILED, no figures: %s" % tok["error"].replace("\n", " ")[:600]]
    L += ["", "(this section took %.0f s)" % t["elapsed_s"], ""]
    errs = [(k, w, e) for k in t["res"] for w in t["res"][k] for e in t["res"][k][w]["errors"]]
    if errs:
        L.append("s_time clients that stopped on a failed connection, e.g.:")
        L.append("")
        L += ["    %s %s: %s" % (k, w, e[:300]) for k, w, e in errs[:4]]
        L.append("")
    for who in ("farmgated", "nginx"):
        lines = t["logs"][who]
        if lines:
            L.append("%s logged %d warning/error line%s during the front TLS runs, e.g.:" % (
                who, len(lines), "" if len(lines) == 1 else "s"))
            L.append("")
            L += ["    " + l[:300] for l in lines[:5]]
            L.append("")
    return L


def run_plain(a, binary, outdir, tmp, procs):
    """The plain-HTTP scenario (unchanged since issue 1): returns its results and its table."""
    host = "bench.local"
    be_port, fg_port, ng_port = free_port(), free_port(), free_port()
    backend = start_nginx(os.path.join(tmp, "backend"),
                          "server { listen 127.0.0.1:%d; keepalive_requests 100000; "
                          "location / { return 200 'hello from the bench backend\\n'; } }"
                          % be_port)
    procs.append(backend)
    ngproxy = start_nginx(os.path.join(tmp, "nginx-proxy"),
                          "upstream farm { server 127.0.0.1:%d; keepalive 64; "
                          "keepalive_requests 100000; }\n"
                          "server { listen 127.0.0.1:%d; keepalive_requests 100000; "
                          "location / { proxy_pass http://farm; proxy_http_version 1.1; "
                          "proxy_set_header Connection ''; "
                          "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
                          "proxy_set_header X-Forwarded-Proto $scheme; } }"
                          % (be_port, ng_port))
    procs.append(ngproxy)
    cfg = {
        "listeners": [{"address": "127.0.0.1", "port": fg_port}],
        "log": {"access": "off"},
        "webFarms": [{"name": "bench",
                      "servers": [{"address": "127.0.0.1", "httpPort": be_port}]}],
        "rules": [{"name": "ARR_bench_loadbalance", "patternSyntax": "Wildcard",
                   "stopProcessing": True, "match": {"url": "*"},
                   "conditions": [{"input": "{HTTP_HOST}", "pattern": host}],
                   "action": {"type": "Rewrite", "url": "http://bench/{R:0}"}}],
    }
    cfgpath = os.path.join(tmp, "farmgated.json")
    with open(cfgpath, "w") as f:
        json.dump(cfg, f)
    fg = subprocess.Popen([binary, "-c", cfgpath], stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(outdir, "farmgated.log"), "w"))
    procs.append(fg)
    for p in (be_port, fg_port, ng_port):
        wait_port(p)
    targets = {"farmgated": (fg_port, fg.pid), "nginx": (ng_port, nginx_worker(ngproxy.pid))}
    # warm both (pools, caches) before measuring
    for name, (port, _) in targets.items():
        wrk(port, 2, a.conns, host)
    runs = {name: [] for name in targets}
    for rnd in range(a.rounds):
        order = list(targets) if rnd % 2 == 0 else list(reversed(list(targets)))
        for name in order:
            port, pid = targets[name]
            c0 = cpu_seconds(pid)
            r = wrk(port, a.seconds, a.conns, host)
            r["cpu_us_per_req"] = (cpu_seconds(pid) - c0) * 1e6 / max(r["requests"], 1)
            runs[name].append(r)
            print("round %d %-9s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  cpu %.1f us/req  "
                  "errors %d" % (rnd + 1, name, r["rps"], r["p50"], r["p99"],
                                 r["cpu_us_per_req"], r["errors"]), flush=True)
    res = {}
    for name, (port, pid) in targets.items():
        rs = runs[name]
        res[name] = {
            "rps": statistics.median(x["rps"] for x in rs),
            "p50_ms": statistics.median(x["p50"] for x in rs),
            "p99_ms": statistics.median(x["p99"] for x in rs),
            "cpu_us_per_req": statistics.median(x["cpu_us_per_req"] for x in rs),
            "errors": sum(x["errors"] for x in rs),
            "rss_kb": mem_kb(pid, "VmRSS"),
            "hwm_kb": mem_kb(pid, "VmHWM"),
        }
    # the plain scenario's processes go before the token scenarios start
    for p in (fg, ngproxy, backend):
        stop(p)
        procs.remove(p)
    f, n = res["farmgated"], res["nginx"]
    ratio = {k: (f[k] / n[k] if n[k] else float("nan"))
             for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_kb")}
    return res, ratio, runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 10)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--skip-plain", action="store_true",
                    help="only the token scenarios (results.md then lacks the first table)")
    ap.add_argument("--skip-token", action="store_true", help="without the token scenarios")
    ap.add_argument("--skip-front-tls", action="store_true",
                    help="without the HTTPS listeners' handshake rates")
    ap.add_argument("--front-seconds", type=int,
                    default=int(os.environ.get("BENCH_FRONT_SECONDS", 2)),
                    help="length of each s_time run of the HTTPS listener scenarios")
    ap.add_argument("--front-clients", type=int, default=2,
                    help="concurrent openssl s_time processes in those runs")
    a = ap.parse_args()
    # a SIGTERM still stops the proxies and backends (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = os.path.abspath(os.path.join(a.build, "farmgated"))
    outdir = os.path.abspath(os.path.join(a.build, "bench"))
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fg-bench-")
    os.chmod(tmp, 0o755)
    procs = []
    t_start = time.time()
    try:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": a.seconds,
                "rounds": a.rounds, "connections": a.conns, "cores": os.cpu_count(),
                "nginx": subprocess.run(["nginx", "-v"], capture_output=True,
                                        text=True).stderr.strip()}
        out = {"meta": meta}
        lines = ["# farmgated vs nginx (make bench, %s)" % meta["date"], ""]
        f = ratio = None
        if not a.skip_plain:
            res, ratio, runs = run_plain(a, binary, outdir, tmp, procs)
            out.update({"results": res, "ratio": ratio, "runs": runs})
            f, n = res["farmgated"], res["nginx"]
            lines += [
                "Small keep-alive GETs through each proxy to the same nginx backend; one worker "
                "each; wrk -t1 -c%d, %d rounds of %d s alternating, medians. %d cores shared by "
                "wrk, the backend and the proxy. %s." % (a.conns, a.rounds, a.seconds,
                                                        meta["cores"], meta["nginx"]), "",
                "| metric | farmgated | nginx | farmgated/nginx |", "|---|---|---|---|",
                "| requests/s | %.0f | %.0f | %.2f |" % (f["rps"], n["rps"], ratio["rps"]),
                "| p50 latency (ms) | %.3f | %.3f | %.2f |" % (f["p50_ms"], n["p50_ms"],
                                                              ratio["p50_ms"]),
                "| p99 latency (ms) | %.3f | %.3f | %.2f |" % (f["p99_ms"], n["p99_ms"],
                                                              ratio["p99_ms"]),
                "| proxy CPU per request (us) | %.1f | %.1f | %.2f |" % (
                    f["cpu_us_per_req"], n["cpu_us_per_req"], ratio["cpu_us_per_req"]),
                "| RSS after the runs (kB) | %d | %d | %.2f |" % (f["rss_kb"], n["rss_kb"],
                                                                  ratio["rss_kb"]),
                "| token signatures per 1000 requests | n/a | n/a | n/a (plain-HTTP farm: no "
                "token; see the token scenarios below) |",
                "| errors (socket + non-2xx) | %d | %d | |" % (f["errors"], n["errors"]), "",
            ]
        rc = 0
        if not a.skip_token:
            try:
                t = run_token(a, binary, outdir, tmp, procs)
                out["token"] = t
                lines += token_md(t, a)
            except Exception as e:  # the plain results still get written
                rc = 1
                out["token"] = {"error": str(e)}
                lines += ["## Token identity scenarios (issue 3)", "",
                          "FAILED, no figures: %s" % str(e).replace("\n", " "), ""]
                traceback.print_exc()
                print("token scenarios failed: %s" % e, file=sys.stderr, flush=True)
        if not a.skip_front_tls:
            try:
                ft = run_front_tls(a, binary, outdir, tmp, procs)
                out["front_tls"] = ft
                lines += front_md(ft, a)
                if ft["token"].get("error"):
                    rc = 1
            except Exception as e:  # the results above still get written
                rc = 1
                out["front_tls"] = {"error": str(e)}
                lines += ["## HTTPS listeners: handshake rates (issue 4)", "",
                          "FAILED, no figures: %s" % str(e).replace("\n", " "), ""]
                traceback.print_exc()
                print("front TLS scenarios failed: %s" % e, file=sys.stderr, flush=True)
        meta["elapsed_s"] = round(time.time() - t_start, 1)
        lines.append("(make bench took %.0f s)" % meta["elapsed_s"])
        lines.append("")
        with open(os.path.join(outdir, "results.json"), "w") as fh:
            json.dump(out, fh, indent=1)
        text = "\n".join(lines)
        with open(os.path.join(outdir, "results.md"), "w") as fh:
            fh.write(text)
        print()
        print(text)
        if ratio:
            print("farmgated/nginx requests/s ratio: %.2f (results in %s)"
                  % (ratio["rps"], os.path.join(outdir, "results.md")))
        return rc
    finally:
        for p in reversed(procs):
            stop(p)
        # keep the token proxy's nginx error log; the rest (token, CA key, configs) goes
        try:
            shutil.copy(os.path.join(tmp, "nginx-token-proxy", "error.log"),
                        os.path.join(outdir, "nginx-token-proxy-error.log"))
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
