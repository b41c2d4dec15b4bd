#!/usr/bin/python3
"""Farmgate test runner (make test / test-unit / test-integration).

    tests/run.py --build DIR [--asan-build DIR] [--fuzz-build DIR]
                 [--only unit|integration|fuzz] [--filter REGEX]

unit:        every DIR/tests/test_* cmocka binary (then the ASan build's), one
             line per binary; cmocka tests are counted one by one.
integration: every top-level test_* function of tests/integration/test_*.py,
             each in its own process with a fresh harness.Env, against
             DIR/farmgated and then against the ASan build's farmgated
             (@release_only tests are skipped there). 300 s per test.
fuzz:        with --fuzz-build DIR, for every tests/fuzz/fuzz_<name>.c:
             fuzz.<name>.regress runs DIR/fuzz_<name> once over each file of
             tests/fuzz/regress/<name>/ and the seed corpus; fuzz.<name>
             fuzzes for FARMGATE_FUZZ_TIME seconds (60) from a fresh copy of
             the seeds, and fails on a non-zero exit or any crash file.

The last line is exactly "N passed, N failed"; the exit status is 0 iff
nothing failed and something passed.
"""

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.dont_write_bytecode = True  # keep the source tree clean
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INTEG = os.path.join(HERE, "integration")
PY = sys.executable or "/usr/bin/python3"
TEST_TIMEOUT = int(os.environ.get("FARMGATE_TEST_TIMEOUT", "300"))
UNIT_TIMEOUT = 300
ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def say(line=""):
    print(line, flush=True)


# --------------------------------------------------------------------------
# unit tests (cmocka)
# --------------------------------------------------------------------------

RX_PASSED = re.compile(r"^\[  PASSED  \] (\d+) test\(s\)\.", re.M)
RX_FAILED_SUM = re.compile(r"^\[  FAILED  \] (\d+) test\(s\)", re.M)
RX_OK = re.compile(r"^\[       OK \] (\S+)", re.M)
RX_FAILED_ONE = re.compile(r"^\[  FAILED  \] (?!\d+ test\(s\))(\S+)\s*$", re.M)
RX_ERROR_ONE = re.compile(r"^\[  ERROR   \] (?!---)(\S+)", re.M)


def parse_cmocka(out):
    """Returns (passed, failed, failed_names, has_summary)."""
    passed = sum(int(n) for n in RX_PASSED.findall(out))
    failed = sum(int(n) for n in RX_FAILED_SUM.findall(out))
    names = []
    for n in RX_FAILED_ONE.findall(out) + RX_ERROR_ONE.findall(out):
        if n not in names:
            names.append(n)
    has_summary = bool(RX_PASSED.search(out) or RX_FAILED_SUM.search(out))
    if not has_summary:
        passed = len(set(RX_OK.findall(out)))
        failed = len(names)
    return passed, failed, names, has_summary


def run_unit(build, label, env_extra):
    tdir = os.path.join(build, "tests")
    bins = []
    if os.path.isdir(tdir):
        for n in sorted(os.listdir(tdir)):
            p = os.path.join(tdir, n)
            if n.startswith("test_") and os.path.isfile(p) and os.access(p, os.X_OK):
                bins.append(p)
    return bins, tdir


def run_unit_suite(build, label, env_extra, flt):
    bins, tdir = run_unit(build, label, env_extra)
    passed = failed = 0
    say("== unit (%s) ==" % label)
    if not bins:
        say("FAIL %s: no unit test binaries in %s (run make unit)" % (label, tdir))
        return 0, 1
    env = dict(os.environ)
    env["CMOCKA_MESSAGE_OUTPUT"] = "stdout"
    env.update(env_extra)
    for b in bins:
        name = "%s/%s" % (label, os.path.basename(b))
        if flt and not re.search(flt, os.path.basename(b)):
            continue
        t0 = time.monotonic()
        try:
            p = subprocess.run([b], capture_output=True, timeout=UNIT_TIMEOUT, env=env, cwd=ROOT)
            out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
            rc = p.returncode
        except subprocess.TimeoutExpired as e:
            out = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
            rc = "timeout"
        dt = time.monotonic() - t0
        np, nf, names, has_summary = parse_cmocka(out)
        why = ""
        if rc == "timeout":
            nf = max(nf, 1)
            why = "timed out after %ds" % UNIT_TIMEOUT
        elif rc != 0 and (not has_summary or nf == 0):
            # crashed, sanitizer abort, or non-zero exit without a parseable failure
            nf += 1
            why = "exit status %s%s" % (rc, " (signal %d)" % -rc if isinstance(rc, int) and rc < 0 else "")
            if "ERROR: AddressSanitizer" in out or "ERROR: LeakSanitizer" in out or "runtime error:" in out:
                why += ", sanitizer report"
        passed += np
        failed += nf
        if nf == 0 and np > 0:
            say("PASS %s: %d passed (%.1fs)" % (name, np, dt))
        else:
            if np == 0 and nf == 0:
                failed += 1
                nf = 1
                why = why or "no tests ran"
            say("FAIL %s: %d passed, %d failed%s%s" % (
                name, np, nf, (" [" + ", ".join(names) + "]") if names else "", (": " + why) if why else ""))
            tail = [l for l in out.splitlines() if l.strip()][-12:]
            for l in tail:
                say("    " + l)
    return passed, failed


# --------------------------------------------------------------------------
# fuzz tests (libFuzzer harnesses, tests/fuzz/)
# --------------------------------------------------------------------------

FUZZ_SRC = os.path.join(HERE, "fuzz")
FUZZ_TIME = int(os.environ.get("FARMGATE_FUZZ_TIME", "60"))
RX_FUZZ_STATS = re.compile(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", re.M)
RX_SAN_START = re.compile(r"^(==\d+==ERROR|.*runtime error:|.*invariant failed:|==\d+== ERROR: libFuzzer)",
                          re.M)


def fuzz_options(name):
    """The harness's libFuzzer options from tests/fuzz/fuzz_<name>.options
    (the file the Makefile's fuzz target reads too): ["-dict=...", ...]."""
    opts = []
    try:
        with open(os.path.join(FUZZ_SRC, "fuzz_%s.options" % name)) as f:
            for line in f:
                k, sep, v = line.partition("=")
                if not sep or line.startswith("["):
                    continue
                k, v = k.strip(), v.strip()
                if k == "dict":
                    v = os.path.join(FUZZ_SRC, v)
                opts.append("-%s=%s" % (k, v))
    except OSError:
        pass
    return opts


def fuzz_files(d):
    """The input files of a corpus or regression directory (not its README)."""
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, n)) and n != "README.md"]


def fuzz_report(out, crashes):
    """The lines a failure shows: the crash files, then the report's start."""
    lines = ["crash: %s" % c for c in crashes]
    m = RX_SAN_START.search(out)
    tail = out[m.start():].splitlines() if m else out.splitlines()[-12:]
    return lines + tail[:14]


def run_fuzz_one(binary, args, timeout):
    t0 = time.monotonic()
    try:
        p = subprocess.run([binary] + args, capture_output=True, timeout=timeout, cwd=ROOT,
                           stdin=subprocess.DEVNULL)
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        out = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
        rc = "timeout after %ds" % timeout
    return rc, out, time.monotonic() - t0


FUZZ_JOBS = 2  # timed runs side by side: one core each, nothing else runs meanwhile


def fuzz_test(binary, name, tid, tmpbase):
    """One fuzz test: (passed, lines to show)."""
    seeds = os.path.join(FUZZ_SRC, "corpus", name)
    regress = os.path.join(FUZZ_SRC, "regress", name)
    if not os.access(binary, os.X_OK):
        return False, ["FAIL %s: %s does not exist (make fuzz-build)" % (tid, binary)]
    tmp = os.path.join(tmpbase, tid)
    crash_dir = os.path.join(tmp, "crashes")
    os.makedirs(crash_dir, exist_ok=True)
    if tid.endswith(".regress"):
        # every reproducer and seed once: must all pass
        files = fuzz_files(regress) + fuzz_files(seeds)
        rc, out, dt = run_fuzz_one(binary, ["-runs=0", "-artifact_prefix=%s/" % crash_dir] + files,
                                   UNIT_TIMEOUT)
        what = "%d inputs" % len(files)
    else:
        corpus = os.path.join(tmp, "corpus")
        shutil.copytree(seeds, corpus)
        args = fuzz_options(name) + [
            "-rss_limit_mb=2048", "-max_total_time=%d" % FUZZ_TIME, "-print_final_stats=1",
            "-artifact_prefix=%s/" % crash_dir, corpus] + ([regress] if os.path.isdir(regress) else [])
        rc, out, dt = run_fuzz_one(binary, args, FUZZ_TIME + UNIT_TIMEOUT)
        m = RX_FUZZ_STATS.search(out)
        what = ("%s runs, %s exec/s, cov %s ft %s" % (m.group(1), m.group(4), m.group(2), m.group(3))
                if m else "no final stats")
    crashes = [os.path.join(crash_dir, n) for n in sorted(os.listdir(crash_dir))]
    if rc == 0 and not crashes:
        shutil.rmtree(tmp, ignore_errors=True)
        return True, ["PASS %s: %s (%.1fs)" % (tid, what, dt)]
    with open(os.path.join(tmp, "output.txt"), "w") as f:
        f.write(out)
    return False, (["FAIL %s: exit status %s, %d crash file(s) (%.1fs)" % (tid, rc, len(crashes), dt)] +
                   ["    " + l[:400] for l in fuzz_report(out, crashes)] +
                   ["    (files kept in %s; tests/fuzz/README.md: crashes become regressions)" % tmp])


def run_fuzz_suite(fuzz_build, flt, tmpbase):
    shown = os.path.relpath(fuzz_build, ROOT)
    say("== fuzz (%s, %d s each, %d at a time) ==" % (fuzz_build if shown.startswith("..") else shown,
                                                      FUZZ_TIME, FUZZ_JOBS))
    names = sorted(n[5:-2] for n in os.listdir(FUZZ_SRC) if n.startswith("fuzz_") and n.endswith(".c"))
    jobs = [(os.path.join(fuzz_build, "fuzz_" + name), name, tid) for name in names
            for tid in ("fuzz.%s.regress" % name, "fuzz.%s" % name) if not flt or re.search(flt, tid)]
    passed = failed = 0
    # the reproducers first, one by one (seconds); then the timed runs side by side
    quick = [j for j in jobs if j[2].endswith(".regress")]
    timed = [j for j in jobs if not j[2].endswith(".regress")]
    results = [fuzz_test(b, n, t, tmpbase) for b, n, t in quick]
    with ThreadPoolExecutor(max_workers=FUZZ_JOBS) as ex:
        futures = [ex.submit(fuzz_test, b, n, t, tmpbase) for b, n, t in timed]
        results += [f.result() for f in futures]
    for ok, lines in results:
        passed += ok
        failed += not ok
        for l in lines:
            say(l)
    return passed, failed


# --------------------------------------------------------------------------
# integration tests
# --------------------------------------------------------------------------

def discover(flt):
    """Returns ([(module, name, release_only, side_by_side)], [(module, error)]). A module
    whose tests wait more than they compute (testssl) sets SIDE_BY_SIDE = N: its tests then run
    N at a time, each in its own process and directory as always."""
    sys.path.insert(0, INTEG)
    tests, errors = [], []
    for fn in sorted(os.listdir(INTEG)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        mod = fn[:-3]
        try:
            m = importlib.import_module(mod)
        except BaseException:
            errors.append((mod, traceback.format_exc()))
            continue
        fns = []
        for name, obj in vars(m).items():
            if name.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == mod:
                fns.append((obj.__code__.co_firstlineno, name, bool(getattr(obj, "release_only", False))))
        side_by_side = max(1, int(getattr(m, "SIDE_BY_SIDE", 1)))
        for _, name, ro in sorted(fns):
            tid = "%s.%s" % (mod, name)
            if flt and not re.search(flt, tid):
                continue
            tests.append((mod, name, ro, side_by_side))
    return tests, errors


def _pgid_members(pgid):
    out = []
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % n, "rb") as f:
                st = f.read().decode("ascii", "replace")
            fields = st[st.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(n))
        except (OSError, ValueError, IndexError):
            continue
    return out


def run_one(mod, name, farmgated, build, asan, tmpbase):
    """Runs one test in a child process; returns (ok, secs, reason, details)."""
    tid = "%s.%s" % (mod, name)
    tmp = os.path.join(tmpbase, ("asan-" if asan else "") + tid)
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    result = os.path.join(tmp, "result.json")
    outp = os.path.join(tmp, "output.txt")
    cmd = [PY, os.path.abspath(__file__), "--child", tid, "--bin", farmgated, "--build", build,
           "--tmp", tmp, "--result", result] + (["--asan"] if asan else [])
    env = dict(os.environ)
    if asan:
        env.update(ASAN_ENV)
    t0 = time.monotonic()
    with open(outp, "wb") as out:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            child.wait(timeout=TEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.kill(child.pid, signal.SIGTERM)  # the child unwinds and stops what it started
            except ProcessLookupError:
                pass
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait(timeout=10)
    dt = time.monotonic() - t0
    # anything the test left running in its process group is a failure too
    left = _pgid_members(child.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    res = None
    try:
        with open(result) as f:
            res = json.load(f)
    except (OSError, ValueError):
        pass
    output = ""
    try:
        with open(outp, "rb") as f:
            output = f.read().decode("utf-8", "replace")
    except OSError:
        pass
    if timed_out:
        reason = "timed out after %ds" % TEST_TIMEOUT
        details = (res or {}).get("details", "") or output[-3000:]
        return False, dt, reason, details
    if res is None:
        return False, dt, "test process exited with %s without a result" % child.returncode, output[-3000:]
    if left:
        return False, dt, "left %d process(es) running: %s (killed)" % (len(left), left), res.get("details", "")
    return res["ok"], dt, res.get("reason", ""), res.get("details", "")


def child_main(a):
    """Runs one test function inside this process (called by run_one)."""
    sys.path.insert(0, INTEG)
    import harness

    def on_term(signum, frame):
        raise harness.TestTimeout("test timed out (signal %d)" % signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_term)
    signal.alarm(max(10, TEST_TIMEOUT - 5))
    mod, name = a.child.rsplit(".", 1)
    res = {"ok": False, "reason": "", "details": ""}
    env = None
    err = None
    try:
        m = importlib.import_module(mod)
        fn = getattr(m, name)
        env = harness.Env(a.bin, a.tmp, build=a.build, asan=a.asan)
        fn(env)
    except BaseException as e:
        err = e
        res["details"] = traceback.format_exc()
    finally:
        if env is not None:
            try:
                env.close()
            except BaseException as e:
                if err is None or isinstance(e, harness.SanitizerError):
                    extra = traceback.format_exc()
                    res["details"] = (res["details"] + "\nduring cleanup:\n" if res["details"] else "") + extra
                    if err is None or isinstance(e, harness.SanitizerError):
                        err = e
        signal.alarm(0)
    if err is None:
        res["ok"] = True
    else:
        msg = str(err).strip().splitlines()
        first = msg[0] if msg else ""
        res["reason"] = "%s: %s" % (type(err).__name__, first) if first else type(err).__name__
        if env is not None and env.farmgateds:
            res["details"] += "\n" + env.log_tails()
    with open(a.result, "w") as f:
        json.dump(res, f)
    return 0


def run_integration_suite(farmgated, build, asan, flt, tmpbase, keep):
    label = "asan" if asan else "release"
    say("== integration (%s: %s) ==" % (label, os.path.relpath(farmgated, ROOT)))
    tests, errors = discover(flt)
    passed = failed = 0
    for mod, err in errors:
        failed += 1
        say("FAIL %s: import error" % mod)
        for l in err.strip().splitlines()[-6:]:
            say("    " + l)
    if not os.access(farmgated, os.X_OK):
        say("FAIL %s: %s does not exist (build it first)" % (label, farmgated))
        return passed, failed + 1

    def report(tid, ok, dt, reason, details):
        if ok:
            say("PASS %s (%.1fs)" % (tid, dt))
            if not keep:
                shutil.rmtree(os.path.join(tmpbase, ("asan-" if asan else "") + tid), ignore_errors=True)
            return
        say("FAIL %s: %s" % (tid, reason))
        lines = [l for l in (details or "").rstrip().splitlines()]
        # the traceback's last lines, then the farmgated log tails
        if "\n--- " in details:
            tb, _, logs = details.partition("\n--- ")
            tbl = tb.rstrip().splitlines()[-8:]
            logl = ("--- " + logs).splitlines()[-16:]
            lines = tbl + logl
        else:
            lines = lines[-12:]
        for l in lines:
            say("    " + l[:400])
        say("    (files kept in %s)" % os.path.join(tmpbase, ("asan-" if asan else "") + tid))

    # consecutive tests of one module run together when it allows more than one at a time
    batches = []
    for mod, name, ro, n in tests:
        if asan and ro:
            continue
        if batches and batches[-1][0] == mod and n > 1:
            batches[-1][2].append(name)
        else:
            batches.append((mod, n, [name]))
    for mod, n, names in batches:
        with ThreadPoolExecutor(max_workers=n) as ex:
            futures = [ex.submit(run_one, mod, name, farmgated, build, asan, tmpbase) for name in names]
            for name, fut in zip(names, futures):
                ok, dt, reason, details = fut.result()
                passed += bool(ok)
                failed += not ok
                report("%s.%s" % (mod, name), ok, dt, reason, details)
    return passed, failed


def drop_if_empty(tmpbase, what):
    """Removes a tier's temp dir when no test kept files there; says where they are if one did."""
    if not os.listdir(tmpbase):
        os.rmdir(tmpbase)
    else:
        say("(%s kept in %s)" % (what, tmpbase))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="release build directory (holds farmgated and tests/)")
    ap.add_argument("--asan-build", help="ASan/UBSan build directory")
    ap.add_argument("--fuzz-build", help="libFuzzer harness directory (make fuzz-build: $(O)/fuzz)")
    ap.add_argument("--only", choices=("unit", "integration", "fuzz"))
    ap.add_argument("--filter", help="regex: unit binaries / integration module.test names")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs of passing tests too")
    # internal: one integration test in this process
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bin", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--asan", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child_main(a)
    if not a.build:
        ap.error("--build is required")
    build = os.path.abspath(a.build)
    asan_build = os.path.abspath(a.asan_build) if a.asan_build else None
    passed = failed = 0
    t0 = time.monotonic()
    if a.only in (None, "unit"):
        p, f = run_unit_suite(build, "unit", {}, a.filter)
        passed += p
        failed += f
        if asan_build:
            p, f = run_unit_suite(asan_build, "asan-unit", ASAN_ENV, a.filter)
            passed += p
            failed += f
    if a.only in (None, "fuzz") and (a.fuzz_build or a.only == "fuzz"):
        if not a.fuzz_build:
            ap.error("--only fuzz needs --fuzz-build")
        tmpbase = tempfile.mkdtemp(prefix="farmgate-fuzz-")
        try:
            p, f = run_fuzz_suite(os.path.abspath(a.fuzz_build), a.filter, tmpbase)
            passed += p
            failed += f
        finally:
            drop_if_empty(tmpbase, "fuzz files")
    if a.only in (None, "integration"):
        tmpbase = tempfile.mkdtemp(prefix="farmgate-it-")
        os.chmod(tmpbase, 0o755)
        try:
            p, f = run_integration_suite(os.path.join(build, "farmgated"), build, False, a.filter, tmpbase, a.keep)
            passed += p
            failed += f
            if asan_build:
                p, f = run_integration_suite(os.path.join(asan_build, "farmgated"), asan_build, True,
                                             a.filter, tmpbase, a.keep)
                passed += p
                failed += f
        finally:
            drop_if_empty(tmpbase, "test files")
    say("(%.0fs)" % (time.monotonic() - t0))
    say("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
