"""farmgate-mgmt for integration tests (docs/management.md).

    from mgmt_client import start_stack

    def test_x(env):
        fg, m = start_stack(env, make_config(...))   # farmgated + farmgate-mgmt on one file
        admin = m.setup()                              # first password, logged in
        r = admin.get("/api/v1/status")
        assert r.status == 200 and r.json()["farms"]
        r = admin.post("/api/v1/farms/web/state", {"state": "Offline"})

* :class:`Mgmt` -- runs ``farmgate-mgmt -c <farmgated's config file> -d <datadir> -s
  <farmgated's control socket> [args...]`` on a free 127.0.0.1 port (the config's "management"
  section), stdout+stderr to ``<tmp>/<name>.log``; stopped by PID at env.close() (and
  checked for sanitizer reports and an unexpected exit).
* :class:`MgmtClient` -- HTTPS (TLS verified against ``<datadir>/mgmt-cert.pem``, the
  host name 127.0.0.1 checked against its SAN), one connection per request, exact
  bytes on the wire; keeps the session cookie and the CSRF token; state changes get
  ``X-CSRF-Token`` and ``Origin: https://127.0.0.1:<port>`` unless told otherwise.
  Answers are harness.HttpResponse objects (plus ``.json()``).
* :class:`MgmtConnection` (``client.keepalive()``) -- one keep-alive HTTP/1.1 connection
  (http.client, no ``Connection: close``) carrying the client's session; it never
  reconnects, so a request after the server closed it raises.
"""

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess

import harness
from harness import (HttpResponse, SanitizerError, build_request, free_port, parse_response,
                     sanitizer_report, wait_port)

PASSWORD = "correct horse battery staple"


def _json_of(resp):
    try:
        return json.loads(resp.body.decode("utf-8"))
    except ValueError as e:
        raise AssertionError("not a JSON answer (%s): %s" % (e, resp.summary()))


def mgmt_bin(env):
    """farmgate-mgmt of the build under test (beside farmgated), or $FARMGATE_MGMT."""
    p = os.environ.get("FARMGATE_MGMT") or os.path.join(os.path.dirname(env.bin), "farmgate-mgmt")
    if not os.access(p, os.X_OK):
        raise AssertionError("farmgate-mgmt is missing beside %s (run make all)" % env.bin)
    return p


class Mgmt:
    """One farmgate-mgmt process for farmgated fg (a harness.Farmgated whose config
    has a "management" section; start_stack() makes such a pair).

      .port, .host          where it listens (from the config file)
      .data_dir             its data directory (created by the daemon: 0700)
      .cert_path            <data_dir>/mgmt-cert.pem (the client trusts it)
      .setup_code           read from <data_dir>/setup-code at start (None once set)
      .client(**kw)         a new MgmtClient (no session)
      .setup(password)      first password with the setup code -> logged-in client
      .login(password)      -> logged-in client
      .audit_entries()      <data_dir>/audit.log as [(time, ip, action, detail)]
      .log_text()           its stdout+stderr
      .stop()               SIGTERM by PID (then SIGKILL); raises on a sanitizer report
    """

    def __init__(self, env, fg, name=None, data_dir=None, config_path=None, args=()):
        self.env = env
        self.fg = fg
        self.args = [str(a) for a in args]
        self.name = name or "mgmt-%d" % next(env._seq)
        self.config_path = config_path or fg.config_path
        self.data_dir = data_dir or env.path(self.name + "-data")
        self.cert_path = os.path.join(self.data_dir, "mgmt-cert.pem")
        self.log_path = env.path(self.name + ".log")
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None
        self.setup_code = None
        self._stopped = False
        self._registered = False

    def _mgmt_section(self):
        with open(self.config_path) as f:
            cfg = json.load(f)
        m = cfg.get("management") or {}
        return cfg, m

    def start(self, timeout=10.0):
        """Starts it (again, after stop(): the same data directory and port)."""
        self._stopped = False
        last = ""
        for attempt in range(4):
            cfg, m = self._mgmt_section()
            self.host = m.get("address", "127.0.0.1")
            self.port = m.get("port", 8443)
            self.proc = self.env.spawn_logged(
                [mgmt_bin(self.env), "-c", self.config_path, "-d", self.data_dir,
                 "-s", self.fg.control_socket] + self.args, self.log_path)
            if not self._registered:
                self._registered = True
                self.env.on_cleanup(self._cleanup)
            if wait_port(self.port, self.host, timeout * self.env.slow,
                         alive=lambda: self.proc.poll() is None):
                code = os.path.join(self.data_dir, "setup-code")
                self.setup_code = open(code).read().strip() if os.path.exists(code) else None
                return self
            last = self.log_text()
            rep = sanitizer_report(last)
            if rep:
                raise SanitizerError("farmgate-mgmt failed to start with a sanitizer report:\n" + rep)
            if self.proc.poll() is None:
                self._kill()
                raise AssertionError("farmgate-mgmt did not listen on %s:%s; log:\n%s"
                                     % (self.host, self.port, last[-3000:]))
            if "in use" not in last.lower():
                break
            # port race: another port in the file (farmgated does not use this section)
            cfg["management"] = dict(m, port=free_port())
            tmp = self.config_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(cfg, f, indent=2)
            os.replace(tmp, self.config_path)
        raise AssertionError("farmgate-mgmt exited with code %s at start; log:\n%s"
                             % (self.proc.returncode, last[-3000:]))

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        return harness._read_text(self.log_path)

    def check_sanitizer(self):
        harness.check_process_log(self, "farmgate-mgmt")

    def assert_alive(self):
        harness.assert_process_alive(self, "farmgate-mgmt")

    def stop(self, timeout=5.0):
        """SIGTERM by PID, wait, SIGKILL. Raises if it had exited by itself or a
        sanitizer reported."""
        if self._stopped or self.proc is None:
            return
        self._stopped = True
        was_dead = self.proc.poll() is not None
        if not was_dead:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout * self.env.slow)
            except subprocess.TimeoutExpired:
                self._kill()
        self.check_sanitizer()
        if was_dead:
            raise AssertionError("farmgate-mgmt (pid %d) had exited by itself with code %s; log tail:\n%s"
                                 % (self.proc.pid, self.proc.returncode, self.log_text()[-3000:]))

    def _cleanup(self):
        self.stop()

    # -- clients -----------------------------------------------------------
    @property
    def origin(self):
        return "https://%s:%d" % (self.host, self.port)

    def client(self, **kw):
        return MgmtClient(self, **kw)

    def setup(self, password=PASSWORD):
        c = self.client()
        r = c.setup(self.setup_code, password)
        assert r.status == 200, "setup refused: " + r.summary()
        assert c.sid, "setup did not give a session cookie: " + r.summary()
        return c

    def login(self, password=PASSWORD, **kw):
        c = self.client(**kw)
        r = c.login(password)
        assert r.status == 200, "login refused: " + r.summary()
        return c

    def audit_entries(self):
        p = os.path.join(self.data_dir, "audit.log")
        out = []
        if os.path.exists(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f.read().split("\n"):
                    if line:
                        out.append(tuple(line.split("\t", 3)))
        return out


class MgmtClient:
    """An HTTPS client of one Mgmt. Keeps the __Host-fgsid cookie (.sid) and the
    CSRF token (.csrf) of its session. source: the local address to connect from
    (e.g. "127.0.0.2")."""

    def __init__(self, mgmt, source=None, timeout=15.0):
        self.m = mgmt
        self.source = source
        self.timeout = timeout * mgmt.env.slow
        self.sid = None
        self.csrf = None
        self.ctx = ssl.create_default_context(cafile=mgmt.cert_path)
        self.ctx.check_hostname = True

    # -- the wire ------------------------------------------------------------
    def connect(self):
        s = socket.create_connection((self.m.host, self.m.port), timeout=self.timeout,
                                     source_address=(self.source, 0) if self.source else None)
        try:
            return self.ctx.wrap_socket(s, server_hostname=self.m.host)
        except BaseException:
            s.close()
            raise

    def exchange(self, data):
        """Sends exactly data (bytes) over a new TLS connection and returns every byte
        the server sends until it closes."""
        s = self.connect()
        out = bytearray()
        try:
            s.sendall(data)
            while True:
                try:
                    d = s.recv(65536)
                except (ssl.SSLEOFError, ConnectionResetError):
                    break
                if not d:
                    break
                out += d
        finally:
            s.close()
        return bytes(out)

    def raw(self, data, head=False):
        """Sends exactly data (bytes) over TLS and parses the one answer (read until
        the server closes)."""
        r, _ = parse_response(self.exchange(data), head_request=head, eof=True)
        if r is None:
            raise AssertionError("no answer to %r" % data[:200])
        r.json = lambda r=r: _json_of(r)
        return r

    def request(self, method, path, body=None, headers=(), csrf=None, origin=None, cookie=True,
                host=None, raw_body=None):
        """method path with body (str/bytes: as is; anything else: JSON). csrf / origin:
        None = sent automatically for POST/PUT/DELETE (the session's token, our own
        origin); False = not sent; a string = that value. cookie: True = the session's,
        False = none, a string = that Cookie header. Returns the HttpResponse."""
        state_change = method not in ("GET", "HEAD")
        hs = []
        if cookie is True and self.sid:
            hs.append(("Cookie", "__Host-fgsid=" + self.sid))
        elif isinstance(cookie, str):
            hs.append(("Cookie", cookie))
        if csrf is None and state_change and self.csrf:
            csrf = self.csrf
        if csrf:
            hs.append(("X-CSRF-Token", csrf))
        if origin is None and state_change:
            origin = self.m.origin
        if origin:
            hs.append(("Origin", origin))
        hs += list(headers)
        data = raw_body
        if data is None and body is not None:
            if isinstance(body, (str, bytes)):
                data = body.encode() if isinstance(body, str) else body
            else:
                data = json.dumps(body).encode()
                hs.append(("Content-Type", "application/json"))
        if data is None and state_change:
            data = b""
        hs.append(("Connection", "close"))
        req = build_request(method, path, host=host or "%s:%d" % (self.m.host, self.m.port),
                            headers=hs, body=data)
        r = self.raw(req, head=(method == "HEAD"))
        self._cookies(r)
        return r

    def _cookies(self, r):
        for v in r.header_all("Set-Cookie"):
            m = re.match(r"__Host-fgsid=([^;]*)", v)
            if not m:
                continue
            if re.search(r";\s*Max-Age=0\b", v, re.I) or not m.group(1):
                self.sid = None
            else:
                self.sid = m.group(1)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # -- auth ----------------------------------------------------------------
    def login(self, password=PASSWORD, **kw):
        r = self.post("/api/v1/auth/login", {"password": password}, **kw)
        if r.status == 200:
            self.csrf = r.json().get("csrfToken")
        return r

    def setup(self, code, password=PASSWORD, **kw):
        r = self.post("/api/v1/auth/setup", {"setupCode": code, "password": password}, **kw)
        if r.status == 200:
            self.csrf = r.json().get("csrfToken")
        return r

    def basic(self, password, user="admin"):
        return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()

    def keepalive(self, connect=True):
        """A MgmtConnection with this client's session (cookie, CSRF token), from its
        source address; connected (TLS handshake done) unless connect=False."""
        c = MgmtConnection(self)
        if connect:
            c.connect()
        return c


class MgmtConnection:
    """One keep-alive HTTPS connection to farmgate-mgmt (http.client: HTTP/1.1, no
    Connection: close) with a MgmtClient's session. It never reconnects: once the server
    closed it, .request() raises (http.client.NotConnected, RemoteDisconnected, an
    ssl/socket error). .local is the (address, port) it was opened from."""

    def __init__(self, client):
        self.c = client
        m = client.m
        self.conn = http.client.HTTPSConnection(
            m.host, m.port, context=client.ctx, timeout=client.timeout,
            source_address=(client.source, 0) if client.source else None)
        self.local = None

    def connect(self):
        """TCP connect and TLS handshake; raises if the server refuses or closes."""
        self.conn.connect()
        self.conn.auto_open = 0
        self.local = self.conn.sock.getsockname()
        return self

    @property
    def open(self):
        return self.conn.sock is not None

    def request(self, method, path, body=None, headers=(), csrf=None, origin=None):
        """Like MgmtClient.request (csrf / origin: None = automatic for state changes,
        False = not sent, a string = that value). Returns a harness.HttpResponse (plus
        .json())."""
        c = self.c
        hs = {}
        if c.sid:
            hs["Cookie"] = "__Host-fgsid=" + c.sid
        state_change = method not in ("GET", "HEAD")
        if csrf is None and state_change and c.csrf:
            csrf = c.csrf
        if csrf:
            hs["X-CSRF-Token"] = csrf
        if origin is None and state_change:
            origin = c.m.origin
        if origin:
            hs["Origin"] = origin
        data = None
        if body is not None:
            if isinstance(body, (str, bytes)):
                data = body.encode() if isinstance(body, str) else body
            else:
                data = json.dumps(body).encode()
                hs["Content-Type"] = "application/json"
        elif state_change:
            data = b""
        for k, v in headers:
            hs[k] = v
        self.conn.request(method, path, body=data, headers=hs)
        resp = self.conn.getresponse()
        r = HttpResponse()
        r.version = "HTTP/1.1" if resp.version == 11 else "HTTP/1.0"
        r.status = resp.status
        r.reason = resp.reason
        r.headers = list(resp.getheaders())
        r.body = resp.read()
        r.complete = True
        r.json = lambda r=r: _json_of(r)
        c._cookies(r)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def close(self):
        self.conn.close()


# The stand-in for /sbin/farmgate-system (farmgate-mgmt -x): one record per run (its
# arguments, where its stdin and stdout go, its blocked and ignored signals), then "end".
SYSTEM_HELPER = r"""#!/bin/sh
stdin=$(readlink /proc/$$/fd/0)
stdout=$(readlink /proc/$$/fd/1)
{
  printf 'argv'; for a in "$@"; do printf '\t%%s' "$a"; done; printf '\n'
  printf 'stdin\t%%s\nstdout\t%%s\n' "$stdin" "$stdout"
  # read by the shell itself (a builtin): the signal state it was started with
  while read -r k v; do
    case $k in SigBlk:|SigIgn:) printf '%%s\t%%s\n' "${k%%:}" "$v";; esac
  done < /proc/$$/status
  printf 'end\n'
} >> '%s'
"""


def system_helper(env, name="farmgate-system"):
    """Writes the stand-in helper into env's directory; returns (its path, the file of
    its runs, see helper_runs)."""
    runs = env.path(name + ".runs")
    path = env.write_text(name, SYSTEM_HELPER % runs)
    os.chmod(path, 0o755)
    return path, runs


def helper_runs(path):
    """The helper's runs so far: [{"argv": [...], "stdin": ..., "stdout": ..., "SigBlk":
    hex, "SigIgn": hex}]."""
    if not os.path.exists(path):
        return []
    out, cur = [], {}
    with open(path) as f:
        for line in f.read().splitlines():
            k, _, v = line.partition("\t")
            if k == "end":
                out.append(cur)
                cur = {}
            elif k == "argv":
                cur["argv"] = v.split("\t") if v else []
            else:
                cur[k] = v
    return out


def start_stack(env, cfg, mgmt_address="127.0.0.1", data_dir=None, fg_kw=None, mgmt_args=()):
    """farmgated with cfg plus a "management" section (a free port on
    mgmt_address), then farmgate-mgmt on the same file (mgmt_args: more of its
    options, e.g. ["-x", helper]). Returns (fg, mgmt)."""
    cfg = json.loads(json.dumps(cfg))
    cfg["management"] = {"address": mgmt_address, "port": free_port(mgmt_address)}
    fg = env.farmgated(cfg, **(fg_kw or {}))
    m = Mgmt(env, fg, data_dir=data_dir, args=mgmt_args)
    m.start()
    return fg, m
