"""Farmgate integration-test harness (Python 3.11 standard library only).

Every integration test is a top-level function ``test_*(env)`` in a module
``tests/integration/test_*.py``; ``tests/run.py`` runs each one in its own
process with a fresh :class:`Env`. Anything started through ``env`` is stopped
by PID when the test ends, even if it fails or times out.

Quick tour (the API other test files should use)::

    from harness import *

    def test_example(env):
        be = env.backend()                          # RecordingBackend (threaded raw socket)
        cfg = make_config(
            farms=[farm("web", [server(be.port)])],
            rules=[arr_lb_rule("web", "www.example.com")])
        fg = env.farmgated(cfg)                     # started, waits until it accepts TCP
        r = http_request(fg.port, "GET", "/x?y=1", host="www.example.com")
        assert r.status == 200, r.summary()
        req = be.requests[0]                        # exact bytes the backend received
        assert req.target == "/x?y=1"
        assert req.header("X-Forwarded-For").startswith("127.0.0.1:")

Building blocks:

* :func:`free_port`, :func:`wait_port`, :func:`wait_for`
* :class:`Farmgated` -- runs ``farmgated -c <file>`` from a config dict;
  ``.port``, ``.pid``, ``.log_text()``, ``.wait_log()``, ``.reload()``,
  ``.rss_kb()``, ``.stop()``; checks ASan/UBSan reports on exit. Every one
  gets its own control socket in the test's temp dir (``control.socket``
  unless the config sets it): ``.control_socket``, ``.control(obj)`` (one
  JSON request, the parsed answer), ``.ctl(*args)`` (build/farmgatectl with
  ``--socket``), ``.status()``, ``.server_status()``, ``.wait_server()``.
* :func:`control_request`, :func:`control_raw` -- the control socket protocol
  (docs/control.md) on any socket path.
* config helpers -- :func:`make_config`, :func:`farm`, :func:`server`,
  :func:`arr_lb_rule`, :func:`rule`, :func:`one_farm_config`.
* :class:`RecordingBackend` with :class:`Reply` -- a backend that records the
  exact bytes of every request head and body and answers as told (status,
  headers, body, chunked, delays, close/reset mid-body, black hole, 101 +
  WebSocket echo, raw bytes); ``.route(path, reply)`` answers one path
  differently (e.g. a health URL), ``.restart()`` on the same port,
  ``.connection_gone(conn_id)`` tells whether the peer closed a connection.
* :class:`NginxBackend` -- Debian's nginx on a free port (modes ``echo``,
  ``static`` with an optional sparse big file, or your own ``server{}`` body);
  ``health_path=`` adds a health URL whose answer ``.set_health()`` changes;
  ``.stop()`` / ``.restart()`` (same port), ``.freeze()`` / ``.thaw()``
  (SIGSTOP / SIGCONT of master and workers).
* :class:`RawClient`, :func:`raw_request`, :func:`http_request`,
  :func:`parse_response`, :func:`parse_responses` -- a raw socket client that
  sends exactly the bytes you give it, and a small HTTP/1.x response parser.
* :func:`curl`, :func:`wrk` -- the real clients, always with timeouts.
* :func:`release_only` -- decorator: the test runs only against the release
  build (not under ASan).
"""

import base64
import hashlib
import itertools
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

__all__ = [
    "release_only", "free_port", "wait_port", "wait_for", "Env", "Farmgated",
    "FarmgatedError", "SanitizerError", "make_config", "farm", "server", "rule",
    "arr_lb_rule", "one_farm_config", "Reply", "Request", "RecordingBackend", "NginxBackend",
    "RawClient", "ConnectionClosed", "IncompleteResponse", "HttpResponse",
    "parse_response", "parse_responses", "raw_request", "http_request", "curl",
    "wrk", "RssSampler", "SANITIZER_MARKERS", "NGINX", "CURL", "WRK",
    "control_request", "control_raw", "ControlError",
]

NGINX = "/usr/sbin/nginx"
CURL = "/usr/bin/curl"
WRK = "/usr/bin/wrk"

#: Strings that mean a sanitizer found a bug in a farmgated run.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:")


def release_only(fn):
    """Marks a test to run only against the release build (RSS limits,
    throughput, 1 GiB transfers): ASan's shadow memory and speed make those
    meaningless."""
    fn.release_only = True
    return fn


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------

def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (bind port 0, read it, close).
    Callers starting a server on it must retry on EADDRINUSE."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_port(port, host="127.0.0.1", timeout=10.0, alive=None):
    """Waits until host:port accepts a TCP connection. alive() (optional) is
    polled too: when it returns False the wait stops early. Returns True when
    the port accepted, False on timeout or when alive() went False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_for(cond, timeout=10.0, interval=0.05, msg="condition"):
    """Polls cond() until it returns a true value (returned) or raises
    AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, msg))
        time.sleep(interval)


def _clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    if extra:
        env.update(extra)
    return env


def _children_of(pid):
    """PIDs whose parent is pid (from /proc)."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for n in names:
        if not n.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % n, "rb") as f:
                st = f.read().decode("ascii", "replace")
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(n))
    return out


def _stop_popen(proc, timeout=10.0, sig=signal.SIGTERM, kill_children=False):
    """Stops a Popen by PID: sig, wait timeout, then SIGKILL (also its direct
    children when kill_children). Returns (returncode, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    kids = _children_of(proc.pid) if kill_children else []
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
        killed = False
    except subprocess.TimeoutExpired:
        kids = list(set(kids) | set(_children_of(proc.pid) if kill_children else []))
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        killed = True
    for k in kids:  # workers orphaned by a killed master
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, killed


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def sanitizer_report(text):
    """Returns the sanitizer report part of a log (from the first marker), or
    None when there is none."""
    idx = [text.find(m) for m in SANITIZER_MARKERS if m in text]
    if not idx:
        return None
    start = text.rfind("\n", 0, min(idx)) + 1
    # include the "=====" banner line above an ASan report if present
    prev = text.rfind("\n", 0, max(0, start - 1)) + 1
    if text[prev:start].startswith("====="):
        start = prev
    return text[start:start + 6000]


class FarmgatedError(AssertionError):
    """farmgated misbehaved as a process (did not start, crashed, wrong exit)."""


class SanitizerError(AssertionError):
    """ASan/LSan/UBSan reported an error in a farmgated run."""


class TestTimeout(BaseException):
    """Raised in a test process by run.py when the test runs out of time."""


# --------------------------------------------------------------------------
# the test environment (fixture)
# --------------------------------------------------------------------------

class Env:
    """Per-test fixture handed to every test function.

    Attributes:
      bin      path of the farmgated binary under test (alias farmgated_bin)
      build    its build directory
      tmp      a fresh temporary directory for this test (mode 0755 so nginx
               workers running as nobody can read files in it)
      asan     True when bin is the ASan/UBSan build
      release  not asan
      slow     time factor for waits (3 under ASan, else 1)
      proc_env environment for farmgated processes (ASAN_OPTIONS etc.)

    Everything started through env.farmgated / env.backend / env.nginx is
    stopped by env.close() (run.py calls it), which also fails the test if
    a farmgated exited unexpectedly or reported a sanitizer error.
    """

    def __init__(self, farmgated_bin, tmp, build=None, asan=False, extra_env=None):
        self.bin = self.farmgated_bin = os.path.abspath(farmgated_bin)
        self.build = os.path.abspath(build) if build else os.path.dirname(self.bin)
        self.tmp = os.path.abspath(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        os.chmod(self.tmp, 0o755)
        self.asan = bool(asan)
        self.release = not self.asan
        self.slow = 3 if self.asan else 1
        extra = dict(extra_env or {})
        if self.asan:
            extra.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
            extra.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc_env = _clean_env(extra)
        self._cleanups = []
        self._seq = itertools.count(1)
        self.farmgateds = []
        self.closed = False

    # -- files ------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def mkdtemp(self, prefix="d"):
        """A new empty directory (mode 0755) inside tmp."""
        d = self.path("%s-%d" % (prefix, next(self._seq)))
        os.makedirs(d)
        os.chmod(d, 0o755)
        return d

    def sock_path(self, name):
        """A path for a unix socket called name: inside tmp when short enough
        for sun_path (108 bytes), else in a short directory under /tmp that
        is removed at close()."""
        p = self.path(name)
        if len(p.encode()) <= 100:
            return p
        if getattr(self, "_short_dir", None) is None:
            import shutil
            import tempfile
            d = tempfile.mkdtemp(prefix="fgc-")
            os.chmod(d, 0o755)
            self._short_dir = d
            self.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
        return os.path.join(self._short_dir, name)

    @property
    def ctl_bin(self):
        """farmgatectl of the build under test (beside farmgated)."""
        for p in (os.path.join(os.path.dirname(self.bin), "farmgatectl"),
                  os.path.join(self.build, "farmgatectl")):
            if os.access(p, os.X_OK):
                return p
        raise AssertionError("farmgatectl is missing beside %s (run make all)" % self.bin)

    def ctl(self, *args, socket_path=None, timeout=20, user=None):
        """Runs farmgatectl args (+ --socket socket_path when given) to
        completion; user="nobody" runs it as uid/gid 65534 (setpriv).
        Returns CompletedProcess with text stdout/stderr and .output (both).
        Fails on a sanitizer report or a timeout."""
        cmd = [self.ctl_bin] + [str(a) for a in args]
        if socket_path is not None:
            cmd += ["--socket", socket_path]
        if user is not None:
            assert user == "nobody", user
            cmd = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout * self.slow,
                               env=self.proc_env, cwd="/")
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not exit within %ss" % (" ".join(cmd), timeout * self.slow))
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        p.output = p.stdout + p.stderr
        p.cmd = " ".join(cmd)
        rep = sanitizer_report(p.output)
        if rep:
            raise SanitizerError("sanitizer report from `%s`:\n%s" % (" ".join(cmd), rep))
        return p

    def write_json(self, name, obj):
        p = self.path(name)
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)
        return p

    def write_text(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    # -- processes --------------------------------------------------------
    def spawn_logged(self, argv, log_path):
        """Starts a daemon with stdout and stderr appended to log_path (stop it by PID)."""
        with open(log_path, "ab") as logf:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    env=self.proc_env, cwd=self.tmp)

    def on_cleanup(self, fn):
        """Registers fn() to run at env.close() (reverse order)."""
        self._cleanups.append(fn)

    def farmgated(self, config, **kw):
        """Starts farmgated with config (a dict) and returns the running
        Farmgated; it is stopped (and checked) at env.close()."""
        fg = Farmgated(self, config, **kw)
        fg.start()
        return fg

    def backend(self, handler=None, **kw):
        """Starts a RecordingBackend (see its doc); stopped at env.close()."""
        be = RecordingBackend(handler, **kw)
        be.start()
        self.on_cleanup(be.stop)
        return be

    def nginx(self, mode="echo", **kw):
        """Starts an NginxBackend (see its doc); stopped at env.close()."""
        ng = NginxBackend(self, mode, **kw)
        ng.start()
        return ng

    def cli(self, *args, timeout=20):
        """Runs farmgated with args (e.g. "-t", "-c", path) to completion.
        Returns CompletedProcess with text stdout/stderr and .output (both).
        Fails on a sanitizer report or a timeout."""
        cmd = [self.bin] + [str(a) for a in args]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout * self.slow,
                               env=self.proc_env, cwd=self.tmp)
        except subprocess.TimeoutExpired:
            raise FarmgatedError("%s did not exit within %ss" % (" ".join(cmd), timeout * self.slow))
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        p.output = p.stdout + p.stderr
        rep = sanitizer_report(p.output)
        if rep:
            raise SanitizerError("sanitizer report from `%s`:\n%s" % (" ".join(cmd), rep))
        return p

    def close(self):
        """Stops everything (reverse start order). Raises the first failure
        (sanitizer report first) after everything has been stopped."""
        if self.closed:
            return
        self.closed = True
        errors = []
        for fn in reversed(self._cleanups):
            try:
                fn()
            except BaseException as e:  # noqa: keep stopping the rest
                errors.append(e)
        self._cleanups = []
        if errors:
            errors.sort(key=lambda e: 0 if isinstance(e, SanitizerError) else 1)
            raise errors[0]

    def log_tails(self, lines=15):
        """Last lines of each farmgated log (for failure reports)."""
        out = []
        for fg in self.farmgateds:
            t = fg.log_text().splitlines()
            out.append("--- %s (last %d of %d lines)" % (fg.log_path, min(lines, len(t)), len(t)))
            out.extend(t[-lines:])
        return "\n".join(out)


# --------------------------------------------------------------------------
# farmgated
# --------------------------------------------------------------------------

def check_process_log(d, what):
    """Raises SanitizerError if daemon d's log (d.log_text()) holds a sanitizer report."""
    rep = sanitizer_report(d.log_text())
    if rep:
        raise SanitizerError("%s (pid %d) sanitizer report:\n%s" % (what, d.proc.pid, rep))


def assert_process_alive(d, what, error=AssertionError):
    """Fails with d's log tail if daemon d (d.alive(), d.proc) has exited."""
    if not d.alive():
        check_process_log(d, what)
        raise error("%s (pid %d) exited unexpectedly with code %s; log tail:\n%s"
                    % (what, d.proc.pid, d.proc.returncode, d.log_text()[-3000:]))


class Farmgated:
    """One farmgated process running ``<bin> -c <tmp>/<name>.json``.

    config is a dict (see make_config). A listener whose "port" is None gets
    a free port (retried if it turns out to be taken). stdout and stderr go
    to <tmp>/<name>.log. Usable as a context manager; env.farmgated() starts
    it and registers the stop.

      .port / .ports   the (first / every) listener port
      .pid, .proc      the process
      .url(path)       "http://127.0.0.1:<port><path>"
      .log_text()      the whole log so far
      .log_mark()      an offset to pass to new_log()/wait_log(since=...)
      .wait_log(pattern, timeout, since) -> the first matching line (regex)
      .reload(config)  -> (ok, line): atomic rewrite + SIGHUP, waits for
                       "configuration reloaded" / "reload failed"
      .rss_kb()        VmRSS in kB
      .stop()          SIGTERM, 10 s, then SIGKILL; raises if it had to kill,
                       if the exit code is not 0 or a sanitizer reported
    """

    def __init__(self, env, config, name=None, args=(), start_timeout=10.0,
                 expect_exit_code=0):
        self.env = env
        self.name = name or "farmgated-%d" % next(env._seq)
        self.config_path = env.path(self.name + ".json")
        self.log_path = env.path(self.name + ".log")
        self.args = list(args)
        self.start_timeout = start_timeout
        self.expect_exit_code = expect_exit_code
        self._auto = [l.get("port") is None for l in config.get("listeners", [])]
        self.config = config
        self.proc = None
        self.ports = []
        self._stopped = False
        self._default_control = env.sock_path(self.name + ".sock")
        self.control_socket = None
        env.farmgateds.append(self)

    # -- lifecycle --------------------------------------------------------
    def _fill_ports(self, config, keep=None):
        cfg = json.loads(json.dumps(config))
        for i, l in enumerate(cfg.get("listeners", [])):
            if l.get("port") is None:
                l["port"] = keep[i] if keep and i < len(keep) else free_port()
            l.setdefault("address", "127.0.0.1")
        # a control socket of its own unless the test's config names one
        if "control" not in cfg:
            cfg["control"] = {}
        ctl = cfg["control"]
        if isinstance(ctl, dict):
            ctl.setdefault("socket", self._default_control)
            self.control_socket = ctl["socket"] or None
        return cfg

    def _write_config(self, cfg):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(tmp, self.config_path)

    def start(self):
        last = ""
        for attempt in range(4):
            cfg = self._fill_ports(self.config)
            self._write_config(cfg)
            self.ports = [l["port"] for l in cfg.get("listeners", [])]
            self.proc = self.env.spawn_logged([self.env.bin] + self.args + ["-c", self.config_path],
                                              self.log_path)
            if not self._started_once:
                self._started_once = True
                self.env.on_cleanup(self._cleanup)
            deadline = time.monotonic() + self.start_timeout * self.env.slow
            ok = True
            for p in self.ports:
                addr = "127.0.0.1"
                if not wait_port(p, addr, max(0.1, deadline - time.monotonic()),
                                 alive=lambda: self.proc.poll() is None):
                    ok = False
                    break
            if ok:
                self.config = cfg
                # the control socket is bound right after the listeners: give it a moment
                # (no failure here: a daemon may run without one)
                if self.control_socket:
                    end = time.monotonic() + 2.0 * self.env.slow
                    while not os.path.exists(self.control_socket) and time.monotonic() < end \
                            and self.proc.poll() is None:
                        time.sleep(0.01)
                return self
            alive = self.proc.poll() is None
            if alive:
                self._kill_quietly()
            last = self.log_text()
            rep = sanitizer_report(last)
            if rep:
                raise SanitizerError("farmgated failed to start with a sanitizer report:\n" + rep)
            if ("in use" in last.lower() or "EADDRINUSE" in last) and any(self._auto):
                continue  # port race: pick new ports
            if alive:
                raise FarmgatedError("farmgated did not accept TCP on %s within %ss; log:\n%s"
                                     % (self.ports, self.start_timeout * self.env.slow, last[-3000:]))
            raise FarmgatedError("farmgated exited with code %s at start; log:\n%s"
                                 % (self.proc.returncode, last[-3000:]))
        raise FarmgatedError("farmgated could not get a free port after 4 tries; log:\n" + last[-3000:])

    _started_once = False

    def _kill_quietly(self):
        if self.proc and self.proc.poll() is None:
            _stop_popen(self.proc, timeout=2)

    def _cleanup(self):
        if not self._stopped:
            self.stop()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def port(self):
        return self.ports[0]

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def check_sanitizer(self):
        check_process_log(self, "farmgated")

    def assert_alive(self):
        """Fails (with the log tail) if farmgated has exited."""
        assert_process_alive(self, "farmgated", FarmgatedError)

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL on timeout. Raises SanitizerError /
        FarmgatedError (exited by itself before stop(), needed SIGKILL, or exit
        code != expect_exit_code). Returns the exit code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        was_dead = self.proc.poll() is not None
        code, killed = _stop_popen(self.proc, timeout=timeout * self.env.slow)
        self.check_sanitizer()
        if was_dead:
            raise FarmgatedError("farmgated (pid %d) had exited by itself with code %s before stop(); log tail:\n%s"
                                 % (self.proc.pid, code, self.log_text()[-3000:]))
        if killed:
            raise FarmgatedError("farmgated (pid %d) ignored SIGTERM for %ss and was killed; log tail:\n%s"
                                 % (self.proc.pid, timeout * self.env.slow, self.log_text()[-2000:]))
        if self.expect_exit_code is not None and code != self.expect_exit_code:
            raise FarmgatedError("farmgated (pid %d) exited with code %s after SIGTERM (expected %s); log tail:\n%s"
                                 % (self.proc.pid, code, self.expect_exit_code, self.log_text()[-2000:]))
        return code

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, et, ev, tb):
        if self._stopped:
            return False
        try:
            self.stop()
        except SanitizerError as e:
            if ev is not None:
                raise e from ev
            raise
        except AssertionError:
            if ev is None:
                raise
        return False

    # -- logs -------------------------------------------------------------
    def log_text(self):
        return _read_text(self.log_path)

    def log_mark(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def new_log(self, since):
        """Log text written after offset since (from log_mark())."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10.0, since=0):
        """Waits for a log line matching regex pattern written after offset
        since; returns the line, raises AssertionError on timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout * self.env.slow
        while True:
            for line in self.new_log(since).splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError("no log line matching %r within %ss; new log:\n%s"
                                     % (pattern, timeout * self.env.slow, self.new_log(since)[-2000:]))
            if not self.alive():
                self.assert_alive()
            time.sleep(0.05)

    def access_lines(self, since=0):
        return [l for l in self.new_log(since).splitlines() if "access:" in l]

    # -- control ----------------------------------------------------------
    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self, config, timeout=10.0):
        """Rewrites the config file atomically with config (listener ports
        that are None keep the current ones), sends SIGHUP and waits for
        "configuration reloaded" or "reload failed". Returns (ok, line).
        With a non-dict config (str/bytes) the text is written verbatim."""
        mark = self.log_mark()
        if isinstance(config, (str, bytes)):
            data = config.encode() if isinstance(config, str) else config
            tmp = self.config_path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.config_path)
        else:
            cfg = self._fill_ports(config, keep=self.ports)
            self._write_config(cfg)
            new_config = cfg
        self.signal(signal.SIGHUP)
        line = self.wait_log(r"configuration reloaded|reload failed", timeout=timeout, since=mark)
        ok = "reload failed" not in line
        if ok and not isinstance(config, (str, bytes)):
            self.config = new_config
        return ok, line

    # -- control socket (docs/control.md) ----------------------------------
    def control(self, obj, timeout=10.0):
        """Sends one request (a dict, or str/bytes sent as they are plus a
        newline) over the control socket; returns the parsed JSON answer."""
        assert self.control_socket, "this farmgated has no control socket"
        return control_request(self.control_socket, obj, timeout=timeout * self.env.slow)

    def control_ok(self, obj, timeout=10.0):
        """control(obj) that must answer "ok": true; returns the answer."""
        ans = self.control(obj, timeout)
        if ans.get("ok") is not True:
            raise ControlError("control request %s was refused: %s" % (json.dumps(obj), json.dumps(ans)))
        return ans

    def ctl(self, *args, timeout=20, user=None):
        """env.ctl(*args) with --socket <this daemon's control socket>."""
        assert self.control_socket, "this farmgated has no control socket"
        return self.env.ctl(*args, socket_path=self.control_socket, timeout=timeout, user=user)

    def status(self, farm=None):
        """The "farms" list of a status request (all farms, or just farm)."""
        req = {"op": "status"}
        if farm is not None:
            req["farm"] = farm
        ans = self.control_ok(req)
        farms = ans.get("farms")
        if not isinstance(farms, list):
            raise ControlError("status answer without a farms list: %s" % json.dumps(ans))
        return farms

    def farm_status(self, farm):
        """The status dict of farm (by name, case-insensitive)."""
        for f in self.status(farm):
            if str(f.get("name", "")).lower() == farm.lower():
                return f
        raise ControlError("farm %s is not in the status answer" % farm)

    def server_status(self, farm, server):
        """The status dict of server ("address:httpPort", or a port number
        meaning 127.0.0.1:<port>) of farm."""
        name = "127.0.0.1:%d" % server if isinstance(server, int) else server
        f = self.farm_status(farm)
        for s in f.get("servers") or []:
            if s.get("server") == name:
                return s
        raise ControlError("server %s is not in farm %s's status: %s" % (
            name, farm, [s.get("server") for s in f.get("servers") or []]))

    def wait_server(self, farm, server, pred, timeout=10.0, msg=None, interval=0.05):
        """Polls server_status until pred(status dict) is true; returns the
        status dict and the seconds it took. timeout is multiplied by
        env.slow."""
        t0 = time.monotonic()
        deadline = t0 + timeout * self.env.slow
        last = None
        while True:
            last = self.server_status(farm, server)
            if pred(last):
                return last, time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.1fs waiting for %s of farm %s; last status: %s" % (
                    timeout * self.env.slow, msg or "a condition on server %s" % server, farm, json.dumps(last)))
            if not self.alive():
                self.assert_alive()
            time.sleep(interval)

    def rss_kb(self):
        """VmRSS of the process in kB."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.proc.pid)

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))


class ControlError(AssertionError):
    """The control socket refused a request or answered something unexpected."""


def control_raw(path, data, timeout=10.0, half_close=False):
    """Connects to the unix socket path, sends data (bytes) and returns every
    byte received until the daemon closes (TimeoutError if it does not close
    within timeout). half_close: shut down the write side after sending."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        s.connect(path)
        if data:
            s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("control socket %s: no end of answer within %.1fs (have %r)"
                                   % (path, timeout, bytes(out[:300])))
            r, _, _ = select.select([s], [], [], left)
            if not r:
                continue
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                break
            if not d:
                break
            out += d
    finally:
        s.close()
    return bytes(out)


def control_request(path, obj, timeout=10.0):
    """One control request (docs/control.md): obj (dict, or str/bytes sent as
    given) on one line; returns the answer parsed as JSON (AssertionError when
    it is not one JSON object)."""
    if isinstance(obj, dict):
        data = json.dumps(obj).encode()
    elif isinstance(obj, str):
        data = obj.encode()
    else:
        data = bytes(obj)
    if not data.endswith(b"\n"):
        data += b"\n"
    raw = control_raw(path, data, timeout)
    try:
        ans = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("control socket %s answered %r to %r: not one JSON object"
                           % (path, raw[:500], data[:200]))
    if not isinstance(ans, dict):
        raise ControlError("control socket %s answered %r: not a JSON object" % (path, raw[:500]))
    return ans


class RssSampler:
    """Samples fg.rss_kb() every interval seconds in a thread while active.
    ``with RssSampler(fg) as s: ...`` then s.max_kb, s.samples."""

    def __init__(self, fg, interval=0.2):
        self.fg = fg
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.fg.rss_kb())
            except (OSError, AssertionError, ValueError):
                pass
            self._stop.wait(self.interval)

    @property
    def max_kb(self):
        return max(self.samples) if self.samples else 0

    def assert_below(self, limit_kb, what="the transfer"):
        """Fails unless there were samples and every one was < limit_kb."""
        assert len(self.samples) >= 2, "RSS sampler got %d samples during %s" % (len(self.samples), what)
        assert self.max_kb < limit_kb, "farmgated VmRSS peaked at %d kB during %s (limit %d kB; %d samples)" % (
            self.max_kb, what, limit_kb, len(self.samples))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(5)
        return False


# --------------------------------------------------------------------------
# configuration helpers
# --------------------------------------------------------------------------

def make_config(farms=(), rules=(), listeners=None, **overrides):
    """A farmgated config dict: one 127.0.0.1 listener on a free port (port
    None = chosen at start), the given webFarms and rules, plus any other
    top-level sections as keyword arguments (limits=..., timeouts=...,
    log=...). Values in overrides replace the defaults; pass
    listeners=[{"address": ..., "port": ...}] for explicit listeners."""
    cfg = {
        "listeners": listeners if listeners is not None else [{"address": "127.0.0.1", "port": None}],
        "webFarms": list(farms),
        "rules": list(rules),
    }
    cfg.update(overrides)
    return cfg


def server(port, address="127.0.0.1", **kw):
    """A webFarms[].servers[] entry: {"address", "httpPort", **kw} (kw: weight,
    enabled, hostName, httpsPort)."""
    d = {"address": address, "httpPort": int(port)}
    d.update(kw)
    return d


def farm(name, servers, **kw):
    """A webFarms[] entry: {"name", "servers", **kw} (kw: enabled,
    loadBalancing={...}, affinity={...}, protocol={...})."""
    d = {"name": name, "servers": list(servers)}
    d.update(kw)
    return d


def arr_lb_rule(farm_name, host):
    """The rule ARR's UI generates for a farm (over http)."""
    return {
        "name": "ARR_%s_loadbalance" % farm_name,
        "patternSyntax": "Wildcard",
        "stopProcessing": True,
        "match": {"url": "*"},
        "conditions": [{"input": "{HTTP_HOST}", "pattern": host}],
        "action": {"type": "Rewrite", "url": "http://%s/{R:0}" % farm_name},
    }


def one_farm_config(ports, host="web.local", name="web", config=None, **farm_kw):
    """Config with one farm `name` whose servers are 127.0.0.1:<port> for
    each port (or server() dicts), reached through arr_lb_rule(name, host).
    farm_kw go into the farm (loadBalancing=..., affinity=..., protocol=...);
    config (dict) is merged into the top level (limits=..., timeouts=...)."""
    servers = [p if isinstance(p, dict) else server(p) for p in ports]
    return make_config(farms=[farm(name, servers, **farm_kw)], rules=[arr_lb_rule(name, host)],
                       **(config or {}))


def rule(name, url, action, conditions=None, **kw):
    """A rules[] entry with match.url = url and the given action dict."""
    d = {"name": name, "match": {"url": url}, "action": action}
    if conditions is not None:
        d["conditions"] = conditions
    d.update(kw)
    return d


# --------------------------------------------------------------------------
# HTTP response parsing (client side)
# --------------------------------------------------------------------------

class HttpResponse:
    """A parsed HTTP/1.x response.

      version "HTTP/1.1", status int, reason str, headers [(name, value)],
      body bytes (de-chunked), raw_head bytes, raw bytes (head + body as
      received), chunked bool, trailers [(name, value)], complete bool (False
      when the connection ended before the framing said the body was done),
      interim [HttpResponse] (1xx responses received before this one).
    """

    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.body = b""
        self.raw_head = b""
        self.raw = b""
        self.chunked = False
        self.trailers = []
        self.complete = False
        self.interim = []

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def has(self, name):
        return self.header(name) is not None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def summary(self, n=300):
        """One-line description for assertion messages."""
        hs = "; ".join("%s: %s" % kv for kv in self.headers)
        return "%s %s %s [%s] body(%d)=%r%s" % (
            self.version, self.status, self.reason, hs[:n], len(self.body),
            self.body[:n], "" if self.complete else " (INCOMPLETE)")

    __repr__ = summary


def _parse_headers(lines):
    hs = []
    for l in lines:
        if not l:
            continue
        k, sep, v = l.partition(b":")
        hs.append((k.decode("latin-1"), v.strip().decode("latin-1")))
    return hs


def parse_response(data, start=0, head_request=False, eof=False):
    """Parses one response at data[start:].

    Returns (HttpResponse, end_offset). When more bytes are needed returns
    (None, start) -- unless eof is True, then an HttpResponse with
    complete=False is returned for whatever is there (None if nothing)."""
    data = bytes(data)
    he = data.find(b"\r\n\r\n", start)
    if he < 0:
        if eof and len(data) > start:
            r = HttpResponse()
            r.raw = data[start:]
            first = r.raw.split(b"\r\n", 1)[0].split(b" ", 2)
            if len(first) >= 2 and first[1].isdigit():
                r.version, r.status = first[0].decode("latin-1"), int(first[1])
            return r, len(data)
        return None, start
    r = HttpResponse()
    head = data[start:he + 4]
    r.raw_head = head
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    r.version = parts[0].decode("latin-1")
    try:
        r.status = int(parts[1])
    except (IndexError, ValueError):
        r.status = -1
    r.reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    r.headers = _parse_headers(lines[1:])
    pos = he + 4
    te = (r.header("Transfer-Encoding") or "").lower()
    cl = r.header("Content-Length")
    if head_request or 100 <= r.status < 200 or r.status in (204, 304):
        r.complete = True
        r.raw = data[start:pos]
        return r, pos
    if "chunked" in te:
        r.chunked = True
        body = []
        while True:
            le = data.find(b"\r\n", pos)
            if le < 0:
                break
            size_s = data[pos:le].split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                r.status = r.status  # malformed chunk: incomplete
                break
            if size == 0:
                # trailers until an empty line
                te_end = data.find(b"\r\n\r\n", le)
                if data[le:le + 4] == b"\r\n\r\n":
                    te_end = le
                if te_end < 0:
                    break
                r.trailers = _parse_headers(data[le + 2:te_end].split(b"\r\n"))
                pos = te_end + 4
                r.complete = True
                break
            if len(data) < le + 2 + size + 2:
                break
            body.append(data[le + 2:le + 2 + size])
            pos = le + 2 + size + 2
        r.body = b"".join(body)
        if not r.complete:
            if eof:
                r.raw = data[start:]
                return r, len(data)
            return None, start
        r.raw = data[start:pos]
        return r, pos
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            n = 0
        if len(data) - pos >= n:
            r.body = data[pos:pos + n]
            r.complete = True
            r.raw = data[start:pos + n]
            return r, pos + n
        if eof:
            r.body = data[pos:]
            r.raw = data[start:]
            return r, len(data)
        return None, start
    # close-delimited
    if eof:
        r.body = data[pos:]
        r.complete = True
        r.raw = data[start:]
        return r, len(data)
    return None, start


def parse_responses(data, head_requests=()):
    """Parses every response in data (a complete capture, e.g. from
    raw_request). head_requests: indexes of responses that answer HEAD. The
    last one may have complete=False. 1xx responses are returned too."""
    out = []
    pos = 0
    i = 0
    while pos < len(data):
        r, end = parse_response(data, pos, head_request=(i in head_requests), eof=True)
        if r is None or end <= pos:
            break
        out.append(r)
        pos = end
        if not (100 <= r.status < 200):
            i += 1
    return out


# --------------------------------------------------------------------------
# raw socket client
# --------------------------------------------------------------------------

class ConnectionClosed(AssertionError):
    """The server closed the connection before sending any byte of a response."""


class IncompleteResponse(AssertionError):
    """The server closed the connection in the middle of a response (.response)."""

    def __init__(self, msg, response):
        super().__init__(msg)
        self.response = response


class RawClient:
    """A TCP client that sends exactly the bytes given and parses responses.

        c = RawClient(port)                 # source="127.0.0.2" to pick the client IP
        c.send(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
        r = c.read_response()               # HttpResponse; 1xx go to r.interim
        c.request("POST", "/x", host="a", body=b"hi")   # formats + sends
        c.wait_closed(2)                    # True once the server closed
    """

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.timeout = timeout
        src = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=src)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = self.sock.getsockname()[1]
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", target="/", host="localhost", headers=(), body=None,
                version="HTTP/1.1"):
        self.send(build_request(method, target, host, headers, body, version))

    def _fill(self, timeout):
        """Receives once; returns bytes count (0 = EOF). Raises TimeoutError."""
        if self.eof:
            return 0
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            raise TimeoutError("no data from server within %.1fs (have %d bytes: %r)"
                               % (timeout, len(self.buf), bytes(self.buf[:200])))
        try:
            d = self.sock.recv(1 << 18)
        except ConnectionResetError:
            self.eof = self.reset = True
            return 0
        if not d:
            self.eof = True
            return 0
        self.buf += d
        return len(d)

    def read_response(self, head=False, timeout=None, allow_incomplete=False):
        """Reads one final response (1xx other than 101 are collected into
        .interim). Raises ConnectionClosed if the connection ends before any
        byte, IncompleteResponse if it ends mid-response (unless
        allow_incomplete: then returns it with complete=False), TimeoutError
        if nothing completes within timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        interim = []
        while True:
            r, end = parse_response(self.buf, 0, head_request=head, eof=self.eof)
            if r is not None:
                del self.buf[:end]
                if not r.complete:
                    r.interim = interim
                    if allow_incomplete:
                        return r
                    raise IncompleteResponse("connection %s mid-response: %s"
                                             % ("reset" if self.reset else "closed", r.summary()), r)
                if 100 <= r.status < 200 and r.status != 101:
                    interim.append(r)
                    continue
                r.interim = interim
                return r
            if self.eof:
                if interim:
                    raise IncompleteResponse("connection closed after interim %d" % interim[-1].status, interim[-1])
                raise ConnectionClosed("connection %s before any response byte"
                                       % ("reset" if self.reset else "closed"))
            self._fill(deadline - time.monotonic())

    def read_interim(self, timeout=None):
        """Reads one 1xx response (e.g. 100 Continue) and returns it."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            r, end = parse_response(self.buf, 0, eof=self.eof)
            if r is not None:
                del self.buf[:end]
                return r
            if self.eof:
                raise ConnectionClosed("connection closed before an interim response")
            self._fill(deadline - time.monotonic())

    def read_exactly(self, n, timeout=None):
        """Reads exactly n raw bytes (e.g. tunnelled WebSocket data)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if self.eof or self._fill(deadline - time.monotonic()) == 0:
                raise ConnectionClosed("closed after %d of %d bytes: %r" % (len(self.buf), n, bytes(self.buf[:200])))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until_close(self, timeout=None):
        """Everything until the server closes (bytes). Raises TimeoutError if
        it does not close within timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline - time.monotonic())
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_closed(self, timeout=5.0):
        """True if the server closes (FIN or RST) within timeout; the bytes
        received meanwhile stay in .buf."""
        try:
            self.read_until_close_keep(timeout)
            return True
        except TimeoutError:
            return False

    def read_until_close_keep(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline - time.monotonic())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
        return False


def build_request(method="GET", target="/", host="localhost", headers=(), body=None,
                  version="HTTP/1.1"):
    """Formats a request. headers: list of (name, value) or a dict; host None
    = no Host header; a Content-Length is added for a bytes body unless the
    headers already give Content-Length or Transfer-Encoding."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    names = {k.lower() for k, _ in headers}
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        data += body
    return data


def raw_request(port, data, read_timeout=5.0, host="127.0.0.1", source=None, total_timeout=60.0):
    """Connects, sends exactly data, and returns every byte received until
    the server closes, or until nothing arrived for read_timeout seconds (or
    total_timeout overall). Parse the result with parse_responses()."""
    s = socket.create_connection((host, port), timeout=10,
                                 source_address=(source, 0) if source else None)
    out = bytearray()
    try:
        s.sendall(data)
        end = time.monotonic() + total_timeout
        while time.monotonic() < end:
            r, _, _ = select.select([s], [], [], read_timeout)
            if not r:
                break
            try:
                d = s.recv(1 << 18)
            except ConnectionResetError:
                break
            if not d:
                break
            out += d
    finally:
        s.close()
    return bytes(out)


def http_request(port, method="GET", target="/", host="localhost", headers=(), body=None,
                 timeout=10.0, source=None, close=True):
    """One request on a new connection (with Connection: close unless
    close=False); returns the final HttpResponse (complete; raises
    ConnectionClosed / IncompleteResponse / TimeoutError otherwise)."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers)
    if close and not any(k.lower() == "connection" for k, _ in headers):
        headers.append(("Connection", "close"))
    with RawClient(port, timeout=timeout, source=source) as c:
        c.request(method, target, host, headers, body)
        return c.read_response(head=(method == "HEAD"))


# --------------------------------------------------------------------------
# recording backend
# --------------------------------------------------------------------------

class Reply:
    """How a RecordingBackend answers one request.

      status, reason            status line (reason defaults to a standard one)
      headers                   [(name, value)] sent as given (no Date/Server)
      body                      bytes (Content-Length added unless chunked,
                                no_length, or a Content-Length header is given)
      body_iter, length         stream a large body from an iterator of bytes
                                (length = its total size for Content-Length)
      chunked                   send Transfer-Encoding: chunked, chunk_size
                                bytes per chunk, then trailers [(name, value)]
      no_length                 no framing: body delimited by closing
      delay                     seconds before the head is sent
      body_delay                seconds between head and body (and between
                                chunks/pieces when chunk_delay is set)
      abort                     None | "close" (FIN) | "reset" (RST) after
                                abort_after bytes of the body bytes on the wire
                                (0 = right after the head); with raw=b""
                                the connection is aborted without any byte
      black_hole                read the request, never answer (held open
                                until the backend stops)
      websocket                 answer 101 (Upgrade: websocket) and then echo
                                every byte back; ws_greeting is sent first
      raw                       send exactly these bytes, then close (or
                                abort) -- no framing added
      close                     send Connection: close and close afterwards
      interim                   list of raw 1xx heads to send before the reply
    """

    def __init__(self, status=200, body=b"", headers=(), reason=None, chunked=False,
                 chunk_size=1000, trailers=(), no_length=False, delay=0.0, body_delay=0.0,
                 chunk_delay=0.0, abort=None, abort_after=0, black_hole=False, websocket=False,
                 ws_greeting=b"", raw=None, close=False, body_iter=None, length=None, interim=()):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        self.reason = reason
        self.chunked = chunked
        self.chunk_size = chunk_size
        self.trailers = list(trailers)
        self.no_length = no_length
        self.delay = delay
        self.body_delay = body_delay
        self.chunk_delay = chunk_delay
        self.abort = abort
        self.abort_after = abort_after
        self.black_hole = black_hole
        self.websocket = websocket
        self.ws_greeting = ws_greeting
        self.raw = raw
        self.close = close
        self.body_iter = body_iter
        self.length = length
        self.interim = list(interim)


_REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
            301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
            307: "Temporary Redirect", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Request:
    """One request as a RecordingBackend received it.

      head       exact bytes of the request line + header fields + empty line
      body       exact body bytes as received on the wire (chunk framing
                 included); b"" when the backend has store_bodies=False
      decoded    the body with chunked framing removed (b"" if not stored)
      body_len   length of the decoded body (counted even when not stored)
      method, target, version, headers [(name, value)] in order
      chunked    True if Transfer-Encoding: chunked; chunk_exts: every chunk
                 extension seen (should be [] after farmgated); trailers bytes
      conn_id    1-based index of the TCP connection it came on
      client     (ip, port) of the connection (farmgated's side)
      time       time.monotonic() when its head was complete
    """

    def __init__(self):
        self.head = b""
        self.body = b""
        self.decoded = b""
        self.body_len = 0
        self.method = ""
        self.target = ""
        self.version = ""
        self.headers = []
        self.chunked = False
        self.chunk_exts = []
        self.chunk_sizes = []
        self.trailers = b""
        self.conn_id = 0
        self.client = None
        self.time = 0.0

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def has(self, name):
        return self.header(name) is not None

    def header_names(self):
        return [k.lower() for k, _ in self.headers]

    def __iter__(self):  # (head_bytes, body_bytes, self) unpacking
        return iter((self.head, self.body, self))

    def __repr__(self):
        return "<Request %s %s conn=%d head=%r body_len=%d>" % (
            self.method, self.target, self.conn_id, self.head[:400], self.body_len)


class _Closed(Exception):
    pass


class _ConnReader:
    def __init__(self, sock, stop, idle_timeout):
        self.sock = sock
        self.stop = stop
        self.idle = idle_timeout
        self.buf = bytearray()
        self.scratch = bytearray(1 << 18)

    def _fill(self):
        deadline = time.monotonic() + self.idle
        while True:
            if self.stop.is_set():
                raise _Closed()
            try:
                r, _, _ = select.select([self.sock], [], [], 0.25)
            except (OSError, ValueError):
                raise _Closed()
            if r:
                try:
                    n = self.sock.recv_into(self.scratch)
                except OSError:
                    raise _Closed()
                if n == 0:
                    raise _Closed()
                return n
            if time.monotonic() >= deadline:
                raise _Closed()

    def _fill_buf(self):
        n = self._fill()
        self.buf += memoryview(self.scratch)[:n]

    def read_until(self, delim, limit):
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise _Closed()
            start = max(0, len(self.buf) - len(delim) + 1)
            self._fill_buf()

    def read_exact(self, n, keep):
        """Reads n bytes; returns them if keep, else only counts them."""
        parts = []
        take = min(n, len(self.buf))
        if take:
            if keep:
                parts.append(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take
        while n > 0:
            got = self._fill()
            if got > n:  # keep the surplus for the next read
                if keep:
                    parts.append(bytes(self.scratch[:n]))
                self.buf += memoryview(self.scratch)[n:got]
                n = 0
            else:
                if keep:
                    parts.append(bytes(self.scratch[:got]))
                n -= got
        return b"".join(parts)


class RecordingBackend:
    """A threaded raw-socket HTTP/1.1 server on 127.0.0.1:<free port> that
    records the exact bytes it receives (see Request) and answers with a
    Reply. handler is a Reply (same answer every time), a callable
    handler(req) -> Reply, or None: 200 with headers X-Backend: <name> and
    body b"backend=<name> <METHOD> <target>".

      .port, .name, .url
      .requests        [Request] in arrival order (thread-safe list)
      .connections     number of TCP connections accepted so far
      .open_connections  currently open
      .ws_data         bytes received over WebSocket tunnels (after 101)
      .wait_requests(n, timeout)
      .clear()         forget the recorded requests

    Keep-alive and pipelining are supported; chunked request bodies are
    decoded (and recorded raw); Expect: 100-continue is answered with
    100 Continue. store_bodies=False counts body bytes without keeping them
    (for 1 GiB uploads). idle_timeout closes idle connections (seconds).
    """

    def __init__(self, handler=None, name=None, store_bodies=True, idle_timeout=120.0,
                 port=0, host="127.0.0.1"):
        self.handler = handler
        self.name = name or "be%d" % id(self)
        self.store_bodies = store_bodies
        self.idle_timeout = idle_timeout
        self.host = host
        self.requested_port = port
        self.requests = []
        self.connections = 0
        self.open_connections = 0
        self.ws_data = bytearray()
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = set()
        self._by_id = {}
        self.routes = {}
        self._threads = []
        self._lsock = None
        self.port = None

    # -- lifecycle --------------------------------------------------------
    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.requested_port))
        s.listen(256)
        s.settimeout(0.2)
        self._lsock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="be-accept-%s" % self.name, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def stop(self):
        self._stop.set()
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)

    def __enter__(self):
        if self.port is None:
            self.start()
        return self

    def __exit__(self, *a):
        self.stop()
        return False

    def clear(self):
        with self._lock:
            del self.requests[:]

    def route(self, path, reply):
        """Answers requests whose path (target without the query) is path
        with reply (a Reply or a callable like handler) instead of the
        handler; reply None removes the route."""
        if reply is None:
            self.routes.pop(path, None)
        else:
            self.routes[path] = reply

    def requests_to(self, path):
        """Recorded requests whose path (without the query) is path."""
        return [r for r in list(self.requests) if r.target.split("?", 1)[0] == path]

    def requests_not_to(self, path):
        """Recorded requests whose path (without the query) is not path."""
        return [r for r in list(self.requests) if r.target.split("?", 1)[0] != path]

    def restart(self):
        """Stops (if running) and listens again on the same port; recorded
        requests are kept."""
        self.stop()
        self._stop = threading.Event()  # connections of the old run keep the old (set) one
        self.requested_port = self.port
        last = None
        for _ in range(50):
            try:
                return self.start()
            except OSError as e:
                last = e
                time.sleep(0.1)
        raise AssertionError("backend %s could not listen on port %d again: %s" % (self.name, self.port, last))

    def connection_gone(self, conn_id):
        """True when the peer (farmgated) closed or reset connection conn_id,
        or this backend has closed it; False while it is open and idle."""
        with self._lock:
            c = self._by_id.get(conn_id)
        if c is None:
            return True
        try:
            d = c.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return d == b""

    @property
    def count(self):
        return len(self.requests)

    def wait_requests(self, n, timeout=10.0):
        wait_for(lambda: len(self.requests) >= n, timeout,
                 msg="%d request(s) at backend %s (have %d)" % (n, self.name, len(self.requests)))
        return self.requests

    # -- serving ----------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, addr = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.setblocking(True)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self.open_connections += 1
                conn_id = self.connections
                self._socks.add(c)
                self._by_id[conn_id] = c
            t = threading.Thread(target=self._serve, args=(c, addr, conn_id),
                                 name="be-%s-%d" % (self.name, conn_id), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _default_reply(self, req):
        return Reply(200, ("backend=%s %s %s" % (self.name, req.method, req.target)).encode(),
                     headers=[("X-Backend", self.name)])

    def _serve(self, c, addr, conn_id):
        rd = _ConnReader(c, self._stop, self.idle_timeout)
        aborted = False
        try:
            while not self._stop.is_set():
                req = self._read_request(rd, c, addr, conn_id)
                if req is None:
                    break
                h = self.routes.get(req.target.split("?", 1)[0], self.handler) if self.routes else self.handler
                if h is None:
                    reply = self._default_reply(req)
                elif isinstance(h, Reply):
                    reply = h
                else:
                    reply = h(req)
                    if reply is None:
                        reply = self._default_reply(req)
                keep, aborted = self._send_reply(c, rd, req, reply)
                if not keep:
                    break
        except _Closed:
            pass
        except OSError:
            pass
        except Exception as e:  # a bug in a handler: record, close
            self.errors.append(repr(e))
        finally:
            with self._lock:
                self._socks.discard(c)
                self.open_connections -= 1
            if not aborted:
                try:
                    c.close()
                except OSError:
                    pass

    def _read_request(self, rd, c, addr, conn_id):
        try:
            head = rd.read_until(b"\r\n\r\n", 1 << 20)
        except _Closed:
            return None
        while head.startswith(b"\r\n"):  # tolerate stray CRLFs between requests
            head = head[2:]
            if not head:
                return None
        req = Request()
        req.head = head
        req.time = time.monotonic()
        req.conn_id = conn_id
        req.client = addr
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        req.method = parts[0]
        req.target = parts[1] if len(parts) > 1 else ""
        req.version = parts[2] if len(parts) > 2 else ""
        req.headers = _parse_headers(lines[1:])
        te = (req.header("Transfer-Encoding") or "").lower()
        if (req.header("Expect") or "").lower() == "100-continue":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        keep = self.store_bodies
        raw = []
        dec = []
        if "chunked" in te:
            req.chunked = True
            while True:
                line = rd.read_until(b"\r\n", 4096)
                if keep:
                    raw.append(line)
                sz, _, ext = line[:-2].partition(b";")
                if ext:
                    req.chunk_exts.append(ext.decode("latin-1"))
                size = int(sz.strip() or b"0", 16)
                req.chunk_sizes.append(size)
                if size == 0:
                    tr = []
                    while True:
                        tl = rd.read_until(b"\r\n", 65536)
                        if keep:
                            raw.append(tl)
                        if tl == b"\r\n":
                            break
                        tr.append(tl)
                    req.trailers = b"".join(tr)
                    break
                data = rd.read_exact(size, keep)
                crlf = rd.read_exact(2, True)
                req.body_len += size
                if keep:
                    raw.append(data)
                    raw.append(crlf)
                    dec.append(data)
        elif req.header("Content-Length") is not None:
            n = int(req.header("Content-Length"))
            data = rd.read_exact(n, keep)
            req.body_len = n
            if keep:
                raw.append(data)
                dec.append(data)
        req.body = b"".join(raw)
        req.decoded = b"".join(dec)
        with self._lock:
            self.requests.append(req)
        return req

    def _sleep(self, secs):
        if secs > 0:
            self._stop.wait(secs)

    def _abort(self, c, how):
        if how == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        else:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _send_reply(self, c, rd, req, reply):
        """Returns (keep_alive, aborted)."""
        self._sleep(reply.delay)
        for h in reply.interim:
            c.sendall(h)
        if reply.black_hole:
            self._stop.wait(600)
            return False, False
        if reply.raw is not None:
            if reply.abort:
                if reply.abort_after and reply.raw:
                    c.sendall(reply.raw[:reply.abort_after])
                    self._sleep(reply.body_delay)
                else:
                    c.sendall(reply.raw)
                    self._sleep(reply.body_delay)
                self._abort(c, reply.abort)
                return False, True
            c.sendall(reply.raw)
            return False, False
        if reply.websocket:
            return self._websocket(c, rd, req, reply)
        status = reply.status
        reason = reply.reason if reply.reason is not None else _REASONS.get(status, "Status")
        hdrs = list(reply.headers)
        names = {k.lower() for k, _ in hdrs}
        no_body = req.method == "HEAD" or 100 <= status < 200 or status in (204, 304)
        body = reply.body
        if reply.chunked:
            if "transfer-encoding" not in names:
                hdrs.append(("Transfer-Encoding", "chunked"))
        elif not reply.no_length and "content-length" not in names and status not in (204, 304):
            n = reply.length if reply.body_iter is not None else len(body)
            hdrs.append(("Content-Length", str(n)))
        client_close = (req.header("Connection") or "").lower() == "close" or req.version == "HTTP/1.0"
        close = reply.close or reply.no_length or client_close
        if reply.close and "connection" not in names:
            hdrs.append(("Connection", "close"))
        head = ("HTTP/1.1 %d %s\r\n" % (status, reason)
                + "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n").encode("latin-1")
        c.sendall(head)
        if no_body:
            return not close, False
        if reply.body_delay:
            self._sleep(reply.body_delay)
        # body pieces on the wire
        if reply.body_iter is not None:
            pieces = reply.body_iter
        else:
            pieces = [body[i:i + reply.chunk_size] for i in range(0, len(body), reply.chunk_size)] \
                if reply.chunked or reply.chunk_delay else [body]
        sent = 0
        first = True
        for p in pieces:
            if not first and reply.chunk_delay:
                self._sleep(reply.chunk_delay)
            first = False
            if reply.chunked:
                if not p:
                    continue
                wire = b"%x\r\n" % len(p) + p + b"\r\n"
            else:
                wire = p
            if reply.abort and sent + len(wire) >= reply.abort_after:
                c.sendall(wire[:reply.abort_after - sent])
                self._sleep(0.05)
                self._abort(c, reply.abort)
                return False, True
            c.sendall(wire)
            sent += len(wire)
        if reply.chunked:
            tail = b"0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in reply.trailers) + b"\r\n"
            if reply.abort:
                c.sendall(tail[:max(0, reply.abort_after - sent)])
                self._abort(c, reply.abort)
                return False, True
            c.sendall(tail)
        elif reply.abort:
            self._sleep(0.05)
            self._abort(c, reply.abort)
            return False, True
        return not close, False

    def _websocket(self, c, rd, req, reply):
        key = req.header("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        if reply.ws_greeting:
            c.sendall(reply.ws_greeting)
        if rd.buf:
            data = bytes(rd.buf)
            rd.buf.clear()
            self.ws_data += data
            c.sendall(data)
        while not self._stop.is_set():
            try:
                n = rd._fill()
            except _Closed:
                break
            data = bytes(rd.scratch[:n])
            self.ws_data += data
            c.sendall(data)
        return False, False


# --------------------------------------------------------------------------
# nginx backend
# --------------------------------------------------------------------------

class NginxBackend:
    """Debian's nginx as a backend on 127.0.0.1:<free port>, in its own
    prefix directory inside env.tmp (conf, pid, logs, temp dirs), started
    with ``daemon off; master_process on; worker_processes 1;`` and stopped
    by PID. Workers run as nobody.

    mode:
      "echo"    every request gets 200 text/plain
                ``server=<name> host=$host uri=$request_uri xff=$http_x_forwarded_for
                xfp=$http_x_forwarded_proto method=$request_method rawhost=$http_host``
                and header X-Server: <name>
      "static"  files from <prefix>/html (index.html says "static <name>");
                big_file=N creates html/big.bin, a SPARSE file of N bytes
      "custom"  server_body is the inside of ``server { listen ...; <here> }``
    http_extra is added inside ``http {}`` (e.g. more server blocks); in it
    and in server_body, @PORT@ is replaced by the chosen port.

    health_path (e.g. "/health") adds ``location = <path> { return
    <health_status> "<health_body>"; }`` before the mode's locations;
    .set_health(status, body) changes that answer (nginx reload, waits until
    it is in effect).

    Attributes: .port, .pid, .name, .prefix, .html, .big_path,
    .access_lines() (format: ``<client ip>:<port> conn=<n> reqs=<n>
    "<request line>" <status> <bytes sent> req_len=<n>``), .error_log().
    .pids() (master and workers), .freeze() / .thaw() (SIGSTOP / SIGCONT
    of all of them), .stop() then .restart() (same port).
    """

    def __init__(self, env, mode="echo", name="nginx", big_file=0, server_body=None,
                 http_extra="", keepalive_requests=1000, keepalive_timeout="75s",
                 health_path=None, health_status=200, health_body="OK"):
        self.env = env
        self.mode = mode
        self.name = name
        self.big_file = big_file
        self.server_body = server_body
        self.http_extra = http_extra
        self.keepalive_requests = keepalive_requests
        self.keepalive_timeout = keepalive_timeout
        self.prefix = env.mkdtemp("nginx-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name))
        self.html = os.path.join(self.prefix, "html")
        self.big_path = os.path.join(self.html, "big.bin")
        self.proc = None
        self.port = None
        self._stopped = False
        self.health_path = health_path
        self.health_status = health_status
        self.health_body = health_body
        self.frozen = False

    def _health_location(self):
        if not self.health_path:
            return ""
        body = self.health_body.replace("\\", "\\\\").replace('"', '\\"')
        return ('location = %s {\n default_type text/plain;\n add_header X-Server "%s" always;\n'
                ' return %d "%s";\n}\n' % (self.health_path, self.name, self.health_status, body))

    def _server_body(self):
        return self._health_location() + self._mode_body()

    def _mode_body(self):
        if self.mode == "echo":
            return ('location / {\n default_type text/plain;\n add_header X-Server "%s" always;\n'
                    ' return 200 "server=%s host=$host uri=$request_uri xff=$http_x_forwarded_for '
                    'xfp=$http_x_forwarded_proto method=$request_method rawhost=$http_host\\n";\n}\n'
                    % (self.name, self.name))
        if self.mode == "static":
            return "location / {\n root %s;\n add_header X-Server \"%s\" always;\n}\n" % (self.html, self.name)
        if self.mode == "custom":
            return self.server_body
        raise ValueError("unknown nginx mode %r" % self.mode)

    def _write_conf(self):
        p = self.prefix
        conf = """
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 4096; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  log_format fg '$remote_addr:$remote_port conn=$connection reqs=$connection_requests "$request" $status $bytes_sent req_len=$request_length';
  access_log {p}/access.log fg;
  client_body_temp_path {p}/client_body_temp;
  proxy_temp_path {p}/proxy_temp;
  fastcgi_temp_path {p}/fastcgi_temp;
  uwsgi_temp_path {p}/uwsgi_temp;
  scgi_temp_path {p}/scgi_temp;
  client_max_body_size 0;
  sendfile on;
  keepalive_requests {kr};
  keepalive_timeout {kt};
  {extra}
  server {{
    listen 127.0.0.1:{port} default_server;
    server_name _;
    {body}
  }}
}}
""".format(p=p, port=self.port, body=self._server_body().replace("@PORT@", str(self.port)),
           extra=self.http_extra.replace("@PORT@", str(self.port)),
           kr=self.keepalive_requests, kt=self.keepalive_timeout)
        path = os.path.join(p, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def start(self):
        os.makedirs(self.html, exist_ok=True)
        os.chmod(self.html, 0o755)
        with open(os.path.join(self.html, "index.html"), "w") as f:
            f.write("static %s\n" % self.name)
        if self.big_file:
            with open(self.big_path, "wb") as f:
                f.truncate(self.big_file)  # sparse
            os.chmod(self.big_path, 0o644)
        self.env.on_cleanup(self.stop)
        last = ""
        for attempt in range(4):
            self.port = free_port()
            conf = self._write_conf()
            errlog = os.path.join(self.prefix, "error.log")
            out = open(os.path.join(self.prefix, "stderr.log"), "ab")
            try:
                self.proc = subprocess.Popen([NGINX, "-p", self.prefix + "/", "-c", conf, "-e", errlog],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            finally:
                out.close()
            if wait_port(self.port, timeout=10, alive=lambda: self.proc.poll() is None):
                return self
            last = self.error_log() + _read_text(os.path.join(self.prefix, "stderr.log"))
            _stop_popen(self.proc, timeout=3, kill_children=True)
            if "in use" in last:
                continue
            raise AssertionError("nginx %s did not start on port %d:\n%s" % (self.name, self.port, last[-2000:]))
        raise AssertionError("nginx %s: no free port after 4 tries:\n%s" % (self.name, last[-2000:]))

    @property
    def pid(self):
        return self.proc.pid

    def pids(self):
        """The master's PID and its children's (the workers)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + _children_of(self.proc.pid)

    def freeze(self):
        """SIGSTOP to the master and every worker: connections are accepted
        by the kernel but nothing answers."""
        self.frozen = True
        for p in self.pids():
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass

    def thaw(self):
        """SIGCONT to the master and every worker."""
        for p in self.pids():
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = False

    def restart(self, timeout=10.0):
        """Starts nginx again on the same port after stop()."""
        assert self.proc is None or self.proc.poll() is not None, "nginx %s is still running" % self.name
        self._stopped = False
        last = ""
        deadline = time.monotonic() + timeout
        while True:
            conf = self._write_conf()
            errlog = os.path.join(self.prefix, "error.log")
            out = open(os.path.join(self.prefix, "stderr.log"), "ab")
            try:
                self.proc = subprocess.Popen([NGINX, "-p", self.prefix + "/", "-c", conf, "-e", errlog],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            finally:
                out.close()
            if wait_port(self.port, timeout=max(0.5, deadline - time.monotonic()),
                         alive=lambda: self.proc.poll() is None):
                return self
            last = self.error_log()[-2000:]
            _stop_popen(self.proc, timeout=3, kill_children=True)
            if time.monotonic() >= deadline:
                raise AssertionError("nginx %s did not restart on port %d:\n%s" % (self.name, self.port, last))
            time.sleep(0.2)

    def set_health(self, status, body=None, timeout=10.0):
        """Makes health_path answer status (and body, when given): rewrites
        nginx.conf, reloads nginx (SIGHUP) and waits until a direct request
        gets the new answer."""
        assert self.health_path, "nginx %s was started without health_path" % self.name
        self.health_status = int(status)
        if body is not None:
            self.health_body = body
        self._write_conf()
        os.kill(self.proc.pid, signal.SIGHUP)
        want_body = self.health_body.encode()

        def in_effect():
            try:
                r = http_request(self.port, "GET", self.health_path, host="localhost", timeout=2)
            except (OSError, AssertionError):
                return False
            return r.status == self.health_status and (r.status == 204 or r.body == want_body)
        wait_for(in_effect, timeout, interval=0.05,
                 msg="nginx %s to answer %d on %s" % (self.name, self.health_status, self.health_path))

    def error_log(self):
        return _read_text(os.path.join(self.prefix, "error.log"))

    def access_lines(self):
        return _read_text(os.path.join(self.prefix, "access.log")).splitlines()

    def stop(self):
        if self._stopped or self.proc is None:
            return
        self._stopped = True
        if self.frozen:
            self.thaw()
        _stop_popen(self.proc, timeout=10, kill_children=True)


# --------------------------------------------------------------------------
# real clients
# --------------------------------------------------------------------------

def curl(args, timeout=60, input=None):
    """Runs curl -sS --noproxy '*' --max-time <timeout> <args>. Returns a
    CompletedProcess (bytes stdout/stderr). Raises AssertionError if curl
    itself hangs past timeout + 10 s."""
    cmd = [CURL, "-sS", "--noproxy", "*", "--max-time", str(timeout)] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout + 10, input=input,
                              env=_clean_env())
    except subprocess.TimeoutExpired:
        raise AssertionError("curl did not finish within %ss: %s" % (timeout + 10, cmd))


def wrk(url, threads=2, connections=64, duration="30s", headers=(), timeout=120):
    """Runs wrk and returns (stdout text, parsed dict): requests, socket_errors
    {connect, read, write, timeout} (zeros if the line is absent), non2xx
    (0 if absent), rps."""
    cmd = [WRK, "-t%d" % threads, "-c%d" % connections, "-d%s" % duration, "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=_clean_env())
    except subprocess.TimeoutExpired:
        raise AssertionError("wrk did not finish within %ss" % timeout)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    res = {"requests": None, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
           "non2xx": 0, "rps": None, "returncode": p.returncode}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    return out, res
