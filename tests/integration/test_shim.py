"""Self-test of the PKCS#11 test shim (tests/pkcs11-shim/shim.c): slow signing, injected
faults, token removal, PIN lockout and stats, driven through pkcs11-tool and, for what only a
long-lived process can show (sessions across a removal, threads), through ctypes in a child
process (this file run as a script).

These tests do not run farmgated: they check the tool other tests rely on."""

import glob
import json
import os
import re
import subprocess
import sys
import time

from harness import release_only

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PKCS11_TOOL = "/usr/bin/pkcs11-tool"
SOFTHSM_UTIL = "/usr/bin/softhsm2-util"
LABEL = "shimtest"
SO_PIN = "12345678"
USER_PIN = "1234"
WRONG_PIN = "9999"


class Token:
    """A fresh SoftHSM token in its own directory, with an EC key (id 01) generated through
    the shim. .p11(*args) runs pkcs11-tool on the shim and returns (rc, output, seconds)."""

    def __init__(self, env):
        self.shim = os.path.join(env.build, "tests", "libfgshim.so")
        assert os.path.isfile(self.shim), "%s is missing (run make unit)" % self.shim
        self.dir = env.mkdtemp("shim")
        tokens = os.path.join(self.dir, "tokens")
        os.makedirs(tokens)
        conf = os.path.join(self.dir, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % tokens)
        self.control = os.path.join(self.dir, "shim.ctl")
        self.state = self.control + ".state"
        self.stats = os.path.join(self.dir, "shim.stats")
        self.data = os.path.join(self.dir, "data")
        with open(self.data, "wb") as f:
            f.write(b"farmgate shim test\n")
        self.env = dict(env.proc_env)
        self.env.update({"SOFTHSM2_CONF": conf, "FGSHIM_MODULE": SOFTHSM,
                         "FGSHIM_CONTROL": self.control, "FGSHIM_STATS": self.stats})
        rc, out, _ = self.run([SOFTHSM_UTIL, "--init-token", "--free", "--label", LABEL,
                               "--so-pin", SO_PIN, "--pin", USER_PIN])
        assert rc == 0, "softhsm2-util --init-token failed:\n" + out
        m = re.search(r"reassigned to slot (\d+)", out)
        assert m, "cannot find the new token's slot in:\n" + out
        self.slot = int(m.group(1))
        rc, out, _ = self.p11("--slot", self.slot, "--login", "--pin", USER_PIN, "--keypairgen",
                              "--key-type", "EC:prime256v1", "--id", "01", "--label", "k1")
        assert rc == 0 and "Key pair generated" in out, "key generation through the shim failed:\n" + out

    def run(self, cmd, extra_env=None, timeout=30):
        env = dict(self.env)
        env.update(extra_env or {})
        t0 = time.monotonic()
        try:
            p = subprocess.run([str(a) for a in cmd], capture_output=True, timeout=timeout, env=env,
                               cwd=self.dir)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not finish within %ss" % (cmd, timeout))
        dt = time.monotonic() - t0
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace"), dt

    def p11(self, *args, module=None, extra_env=None):
        return self.run([PKCS11_TOOL, "--module", module or self.shim] + list(args), extra_env)

    def set_control(self, text):
        """Replaces the control file atomically (the shim may read it at any moment)."""
        tmp = self.control + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.control)

    def sign(self, pin=USER_PIN, by_label=False, extra_env=None):
        sig = os.path.join(self.dir, "sig")
        if os.path.exists(sig):
            os.unlink(sig)
        where = ["--token-label", LABEL] if by_label else ["--slot", self.slot]
        rc, out, dt = self.p11(*where, "--login", "--pin", pin, "--sign", "-m", "ECDSA", "--id", "01",
                               "-i", self.data, "-o", sig, extra_env=extra_env)
        return rc, out, dt

    def login(self, pin):
        """A user login (then a private-object listing) in a new process."""
        return self.p11("--slot", self.slot, "--login", "--pin", pin, "--list-objects", "--type", "privkey")

    def slot_block(self, listing):
        """The lines of `pkcs11-tool -L` output about our slot ('' if it is not listed)."""
        out, inside = [], False
        for line in listing.splitlines():
            if line.startswith("Slot "):
                inside = "(0x%x)" % self.slot in line
            if inside:
                out.append(line)
        return "\n".join(out)

    def token_flags(self):
        rc, out, _ = self.p11("-L")
        assert rc == 0, "pkcs11-tool -L failed:\n" + out
        block = self.slot_block(out)
        m = re.search(r"token flags\s*:\s*(.*)", block)
        assert m, "no token flags for slot 0x%x in:\n%s" % (self.slot, out)
        return m.group(1)


def _read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                out[k] = int(v)
    return out


# The shim is independent of farmgated: running these again against the ASan build adds nothing.

@release_only
def test_shim_sign_works_and_delays(env):
    t = Token(env)
    rc, out, fast = t.sign()
    assert rc == 0, "a signature through the shim failed:\n" + out
    sig = os.path.join(t.dir, "sig")
    assert os.path.getsize(sig) == 64, "an ECDSA P-256 signature is 64 bytes, got %d" % os.path.getsize(sig)
    # checked by SoftHSM directly, so a shim that mangled data or signatures would show
    rc, out, _ = t.p11("--slot", t.slot, "--verify", "-m", "ECDSA", "--id", "01", "-i", t.data,
                       "--signature-file", sig, module=SOFTHSM)
    assert "Signature is valid" in out, "SoftHSM does not accept the shim's signature:\n" + out

    rc, out, _ = t.p11("-I")
    assert rc == 0 and "Farmgate test shim" in out, "C_GetInfo must name the shim:\n" + out
    rc, real_out, _ = t.p11("-I", module=SOFTHSM)
    ver = re.search(r"\(ver ([\d.]+)\)", real_out).group(1)
    assert "(ver %s)" % ver in out, "C_GetInfo must keep the real library version %s:\n%s" % (ver, out)

    assert fast < 0.3, "an undelayed signature took %.2fs: too slow to measure a 0.3 s delay" % fast
    t.set_control("sign_delay_ms=300\n")
    rc, out, slow = t.sign()
    assert rc == 0, "a delayed signature failed:\n" + out
    assert slow >= 0.3, "sign_delay_ms=300 but the signature took only %.3fs" % slow
    t.set_control("# back to normal\n")
    rc, out, again = t.sign()
    assert rc == 0 and again < 0.3, "without sign_delay_ms a signature took %.3fs (rc %d)" % (again, rc)


@release_only
def test_shim_fail_injection(env):
    t = Token(env)
    t.set_control("fail=CKR_DEVICE_ERROR\n")
    rc, out, _ = t.sign()
    assert rc != 0 and "CKR_DEVICE_ERROR" in out, "fail=CKR_DEVICE_ERROR must break signing:\n" + out

    # restricted to signing: the token is listed and the login works, only the signature fails
    t.set_control("fail=0x30\nfail_calls=C_Sign, C_SignUpdate\n")
    rc, out, _ = t.p11("-L")
    assert rc == 0 and LABEL in t.slot_block(out), "fail_calls=C_Sign* must not break -L:\n" + out
    rc, out, _ = t.sign()
    assert rc != 0 and "CKR_DEVICE_ERROR" in out, "fail=0x30 on C_Sign* must break signing:\n" + out
    assert "C_Login" not in out and re.search(r"C_Sign\w* failed", out), \
        "only the signing calls should have failed:\n" + out

    t.set_control("fail=CKR_PIN_EXPIRED\nfail_calls=Login\n")
    rc, out, _ = t.sign()
    assert rc != 0 and "C_Login failed" in out and "CKR_PIN_EXPIRED" in out, \
        "fail_calls=Login must fail C_Login with the given code:\n" + out

    t.set_control("fail=\n")
    rc, out, _ = t.sign()
    assert rc == 0, "an empty fail= must restore normal signing:\n" + out

    t.set_control("fail=CKR_NO_SUCH_THING\nbogus=1\n")
    rc, out, _ = t.sign()
    assert rc == 0, "an unknown return value must be ignored, not injected:\n" + out
    assert "fgshim:" in out and "CKR_NO_SUCH_THING" in out and "bogus" in out, \
        "bad control lines must be reported on stderr:\n" + out


@release_only
def test_shim_removal(env):
    t = Token(env)
    t.set_control("removed=1\n")
    rc, out, _ = t.p11("-L")
    block = t.slot_block(out)
    assert rc == 0 and block, "the reader (slot 0x%x) must still be listed:\n%s" % (t.slot, out)
    assert "(empty)" in block and LABEL not in block, "removed=1: the slot must be empty:\n" + out
    rc, out, _ = t.p11("-T")  # C_GetSlotList(tokenPresent=TRUE)
    assert "(0x%x)" % t.slot not in out, "removed=1: the slot must not have a token:\n" + out
    rc, out, _ = t.sign(by_label=True)
    assert rc != 0, "signing must fail while the token is removed:\n" + out
    rc, out, _ = t.sign()
    assert rc != 0 and "CKR_TOKEN_NOT_PRESENT" in out, "a removed token must say CKR_TOKEN_NOT_PRESENT:\n" + out

    t.set_control("removed=0\n")
    rc, out, _ = t.p11("-L")
    assert rc == 0 and LABEL in t.slot_block(out), "removed=0 must bring the token back:\n" + out
    rc, out, _ = t.sign(by_label=True)
    assert rc == 0, "signing must work after the token is back:\n" + out


@release_only
def test_shim_pin_lockout(env):
    t = Token(env)
    flags = t.token_flags()
    assert "count low" not in flags and "locked" not in flags, "a fresh token has no PIN flags: " + flags

    # a success resets the counter, as on a real token
    rc, out, _ = t.login(WRONG_PIN)
    assert rc != 0 and "CKR_PIN_INCORRECT" in out, out
    assert "user PIN count low" in t.token_flags(), "one failure must set CKF_USER_PIN_COUNT_LOW"
    rc, out, _ = t.login(USER_PIN)
    assert rc == 0, "the right PIN must work after one failure:\n" + out
    assert "count low" not in t.token_flags(), "a successful login must reset the counter"

    expect = [("user PIN count low", ("final user PIN try", "locked")),
              ("final user PIN try", ("locked",)),
              ("user PIN locked", ("final user PIN try",))]
    for i, (has, hasnt) in enumerate(expect, 1):
        rc, out, _ = t.login(WRONG_PIN)
        assert rc != 0 and "CKR_PIN_INCORRECT" in out, "wrong PIN #%d:\n%s" % (i, out)
        flags = t.token_flags()
        assert has in flags, "after %d wrong PIN(s) the flags must say %r: %s" % (i, has, flags)
        for h in hasnt:
            assert h not in flags, "after %d wrong PIN(s) the flags must not say %r: %s" % (i, h, flags)
    with open(t.state) as f:
        assert f.read().strip() == "pin_failures=3", "the state file must hold the counter"
    rc, out, _ = t.login(USER_PIN)
    assert rc != 0 and "CKR_PIN_LOCKED" in out, "a locked token must refuse the right PIN:\n" + out

    os.unlink(t.state)
    rc, out, _ = t.login(USER_PIN)
    assert rc == 0 and "Private Key Object" in out, "deleting the state file must unlock:\n" + out
    assert "count low" not in t.token_flags()

    # pin_tries and reset_pin
    t.set_control("pin_tries=5\n")
    for _ in range(3):
        t.login(WRONG_PIN)
    flags = t.token_flags()
    assert "count low" in flags and "final" not in flags and "locked" not in flags, \
        "3 failures of 5 tries: count low only: " + flags
    t.login(WRONG_PIN)
    assert "final user PIN try" in t.token_flags(), "4 failures of 5 tries: final try"
    t.set_control("pin_tries=5\nreset_pin=1\n")
    assert "count low" not in t.token_flags(), "reset_pin=1 must reset the counter"


@release_only
def test_shim_stats(env):
    t = Token(env)
    pattern = os.path.join(t.dir, "stats.%p")
    extra = {"FGSHIM_STATS": pattern}
    for _ in range(3):
        rc, out, _ = t.sign(extra_env=extra)
        assert rc == 0, out
    rc, out, _ = t.sign(pin=WRONG_PIN, extra_env=extra)
    assert rc != 0, out
    files = [f for f in glob.glob(os.path.join(t.dir, "stats.*")) if ".tmp." not in f]
    assert len(files) == 4, "one stats file per process (%%p) expected, got %s" % files
    total = {}
    for f in files:
        for k, v in _read_kv(f).items():
            total[k] = total.get(k, 0) + v
    assert total.get("sign_calls") == 3 and total.get("signatures") == 3, \
        "3 signatures were made, stats say %s" % total
    assert total.get("login_calls") == 4, "4 logins were tried, stats say %s" % total


@release_only
def test_shim_in_process(env):
    """Sessions across a removal, object handles, logout, threads, stats without C_Finalize."""
    t = Token(env)
    stats = os.path.join(t.dir, "inproc.stats")
    args = json.dumps({"shim": t.shim, "slot": t.slot, "control": t.control, "stats": stats})
    rc, out, _ = t.run([sys.executable, os.path.abspath(__file__), "--inproc", args],
                       extra_env={"FGSHIM_STATS": stats, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)
    assert rc == 0, "in-process shim checks failed (exit %d):\n%s" % (rc, out[-4000:])
    assert "in-process checks passed" in out, out[-4000:]


# --------------------------------------------------------------------------
# the in-process driver (runs in a child: a crash in the module must not take the test runner)
# --------------------------------------------------------------------------

_FUNCS = """C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo
C_GetTokenInfo C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN C_OpenSession
C_CloseSession C_CloseAllSessions C_GetSessionInfo C_GetOperationState C_SetOperationState C_Login
C_Logout C_CreateObject C_CopyObject C_DestroyObject C_GetObjectSize C_GetAttributeValue
C_SetAttributeValue C_FindObjectsInit C_FindObjects C_FindObjectsFinal C_EncryptInit C_Encrypt
C_EncryptUpdate C_EncryptFinal C_DecryptInit C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit
C_Digest C_DigestUpdate C_DigestKey C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal
C_SignRecoverInit C_SignRecover C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal
C_VerifyRecoverInit C_VerifyRecover C_DigestEncryptUpdate C_DecryptDigestUpdate C_SignEncryptUpdate
C_DecryptVerifyUpdate C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey C_DeriveKey
C_SeedRandom C_GenerateRandom C_GetFunctionStatus C_CancelFunction C_WaitForSlotEvent""".split()

CKR = {0: "CKR_OK", 0x30: "CKR_DEVICE_ERROR", 0x32: "CKR_DEVICE_REMOVED", 0x60: "CKR_KEY_HANDLE_INVALID",
       0x90: "CKR_OPERATION_ACTIVE", 0xA4: "CKR_PIN_LOCKED", 0xB3: "CKR_SESSION_HANDLE_INVALID",
       0xE0: "CKR_TOKEN_NOT_PRESENT", 0x100: "CKR_USER_ALREADY_LOGGED_IN", 0x101: "CKR_USER_NOT_LOGGED_IN"}


def _inproc_main(a):
    import ctypes as C
    import threading

    UL = C.c_ulong
    VP = C.c_void_p

    class Version(C.Structure):
        _fields_ = [("major", C.c_ubyte), ("minor", C.c_ubyte)]

    class Info(C.Structure):
        _fields_ = [("cryptokiVersion", Version), ("manufacturerID", C.c_char * 32), ("flags", UL),
                    ("libraryDescription", C.c_char * 32), ("libraryVersion", Version)]

    class SlotInfo(C.Structure):
        _fields_ = [("slotDescription", C.c_char * 64), ("manufacturerID", C.c_char * 32), ("flags", UL),
                    ("hardwareVersion", Version), ("firmwareVersion", Version)]

    class TokenInfo(C.Structure):
        _fields_ = ([("label", C.c_char * 32), ("manufacturerID", C.c_char * 32), ("model", C.c_char * 16),
                     ("serialNumber", C.c_char * 16), ("flags", UL)] +
                    [(n, UL) for n in ("maxs", "s", "maxrw", "rw", "maxpin", "minpin", "tpub", "fpub",
                                       "tpriv", "fpriv")] +
                    [("hardwareVersion", Version), ("firmwareVersion", Version), ("utcTime", C.c_char * 16)])

    class SessionInfo(C.Structure):
        _fields_ = [("slotID", UL), ("state", UL), ("flags", UL), ("ulDeviceError", UL)]

    class InitArgs(C.Structure):
        _fields_ = [("create", VP), ("destroy", VP), ("lock", VP), ("unlock", VP), ("flags", UL),
                    ("reserved", VP)]

    class Mechanism(C.Structure):
        _fields_ = [("mechanism", UL), ("parameter", VP), ("len", UL)]

    class Attribute(C.Structure):
        _fields_ = [("type", UL), ("value", VP), ("len", UL)]

    class FunctionList(C.Structure):
        _fields_ = [("version", Version)] + [(n, VP) for n in _FUNCS]

    lib = C.CDLL(a["shim"])
    fl = C.POINTER(FunctionList)()
    assert lib.C_GetFunctionList(C.byref(fl)) == 0, "C_GetFunctionList failed"
    fl = fl.contents

    def fn(name, *argtypes):
        # CFUNCTYPE calls release the GIL, so two Python threads really are in the module at once
        return C.CFUNCTYPE(UL, *argtypes)(getattr(fl, name))

    P = C.POINTER
    Initialize = fn("C_Initialize", VP)
    Finalize = fn("C_Finalize", VP)
    GetInfo = fn("C_GetInfo", P(Info))
    GetSlotList = fn("C_GetSlotList", C.c_ubyte, P(UL), P(UL))
    GetSlotInfo = fn("C_GetSlotInfo", UL, P(SlotInfo))
    GetTokenInfo = fn("C_GetTokenInfo", UL, P(TokenInfo))
    OpenSession = fn("C_OpenSession", UL, UL, VP, VP, P(UL))
    CloseSession = fn("C_CloseSession", UL)
    GetSessionInfo = fn("C_GetSessionInfo", UL, P(SessionInfo))
    Login = fn("C_Login", UL, UL, C.c_char_p, UL)
    FindObjectsInit = fn("C_FindObjectsInit", UL, P(Attribute), UL)
    FindObjects = fn("C_FindObjects", UL, P(UL), UL, P(UL))
    FindObjectsFinal = fn("C_FindObjectsFinal", UL)
    SignInit = fn("C_SignInit", UL, P(Mechanism), UL)
    Sign = fn("C_Sign", UL, C.c_char_p, UL, C.c_char_p, P(UL))
    GenerateRandom = fn("C_GenerateRandom", UL, C.c_char_p, UL)

    slot = a["slot"]
    counts = {"sign_calls": 0, "login_calls": 0, "signatures": 0}

    def name(rv):
        return CKR.get(rv, "0x%x" % rv)

    def want(what, rv, expected=0):
        assert rv == expected, "%s returned %s, expected %s" % (what, name(rv), name(expected))

    def control(text):
        tmp = a["control"] + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a["control"])

    def open_session():
        h = UL()
        want("C_OpenSession", OpenSession(slot, 4 | 2, None, None, C.byref(h)))  # SERIAL | RW
        return h.value

    def login(h, expected=0):
        counts["login_calls"] += 1
        want("C_Login", Login(h, 1, USER_PIN.encode(), len(USER_PIN)), expected)

    def session_state(h):
        si = SessionInfo()
        want("C_GetSessionInfo", GetSessionInfo(h, C.byref(si)))
        return si.state

    def find_key(h):
        cls, kid = UL(3), C.create_string_buffer(b"\x01", 1)  # CKO_PRIVATE_KEY, CKA_ID 01
        tmpl = (Attribute * 2)(Attribute(0, C.cast(C.byref(cls), VP), C.sizeof(cls)),
                               Attribute(0x102, C.cast(kid, VP), 1))
        want("C_FindObjectsInit", FindObjectsInit(h, tmpl, 2))
        objs, n = (UL * 4)(), UL()
        want("C_FindObjects", FindObjects(h, objs, 4, C.byref(n)))
        want("C_FindObjectsFinal", FindObjectsFinal(h))
        assert n.value == 1, "expected one private key with id 01, found %d" % n.value
        return objs[0]

    def sign_init(h, key):
        return SignInit(h, C.byref(Mechanism(0x1041, None, 0)), key)  # CKM_ECDSA

    def sign_only(h):
        buf, n = C.create_string_buffer(256), UL(256)
        counts["sign_calls"] += 1
        rv = Sign(h, b"x" * 32, 32, buf, C.byref(n))
        if rv == 0:
            counts["signatures"] += 1
            assert n.value == 64, "an ECDSA P-256 signature is 64 bytes, got %d" % n.value
        return rv

    def sign(h, key):
        rv = sign_init(h, key)
        return rv if rv else sign_only(h)

    def stats_now():
        try:
            return _read_kv(a["stats"])
        except (OSError, ValueError):
            return {}

    def wait_stats(what, timeout=1.0):
        deadline = time.monotonic() + timeout
        while stats_now() != counts:
            assert time.monotonic() < deadline, "%s: stats file says %s, expected %s" % (what, stats_now(), counts)
            time.sleep(0.02)

    control("")
    args = InitArgs(None, None, None, None, 2, None)  # CKF_OS_LOCKING_OK
    want("C_Initialize", Initialize(C.byref(args)))
    info = Info()
    want("C_GetInfo", GetInfo(C.byref(info)))
    assert info.manufacturerID.startswith(b"Farmgate test shim"), info.manufacturerID

    h1 = open_session()
    login(h1)
    k1 = find_key(h1)
    want("first C_Sign", sign(h1, k1))
    # no C_Finalize yet: the stats file is kept up to date while the process runs
    wait_stats("after one signature")
    print("basic signing and live stats ok", flush=True)

    # a slow signature in one thread must not hold up calls in another
    h2 = open_session()
    control("sign_delay_ms=700\n")
    res = {}

    def signer():
        t0 = time.monotonic()
        res["rv"] = sign(h1, k1)
        res["dt"] = time.monotonic() - t0

    th = threading.Thread(target=signer)
    th.start()
    time.sleep(0.15)
    t0 = time.monotonic()
    ti = TokenInfo()
    want("C_GetTokenInfo during a slow C_Sign", GetTokenInfo(slot, C.byref(ti)))
    session_state(h2)
    want("C_GenerateRandom during a slow C_Sign", GenerateRandom(h2, C.create_string_buffer(16), 16))
    other = time.monotonic() - t0
    busy = th.is_alive()
    th.join(10)
    assert busy, "the delayed C_Sign was already over after 0.15 s: sign_delay_ms not applied"
    assert other < 0.3, "calls in another thread took %.2fs while C_Sign slept: the lock is held" % other
    want("delayed C_Sign", res["rv"])
    assert res["dt"] >= 0.7, "sign_delay_ms=700 but C_Sign took %.3fs" % res["dt"]
    # a size query (NULL buffer) does not pay the delay: one delay per signature
    want("C_SignInit", sign_init(h1, k1))
    n = UL(0)
    t0 = time.monotonic()
    counts["sign_calls"] += 1
    want("C_Sign size query", Sign(h1, b"x" * 32, 32, None, C.byref(n)))
    query = time.monotonic() - t0
    assert n.value == 64 and query < 0.3, "size query: %d bytes in %.3fs (must be 64, undelayed)" % (n.value, query)
    control("")
    want("C_Sign after the size query", sign_only(h1))
    print("slow signing ok (other thread: %.3fs, signer %.3fs)" % (other, res["dt"]), flush=True)

    # an injected failure ends the real operation, as a real failure would
    control("fail=CKR_DEVICE_ERROR\nfail_calls=C_Sign\n")
    want("C_SignInit with fail_calls=C_Sign", sign_init(h1, k1))
    want("C_Sign with fail_calls=C_Sign", sign_only(h1), 0x30)
    control("")
    want("C_Sign after the fault is cleared (operation must not still be active)", sign(h1, k1))
    control("fail=CKR_DEVICE_ERROR\nfail_calls=C_FindObjectsFinal\n")
    want("C_FindObjectsInit", FindObjectsInit(h1, None, 0))
    want("C_FindObjectsFinal with an injected fault", FindObjectsFinal(h1), 0x30)
    control("")
    want("C_FindObjectsInit after an injected C_FindObjectsFinal fault", FindObjectsInit(h1, None, 0))
    want("C_FindObjectsFinal", FindObjectsFinal(h1))
    # a plain fail= hits token calls but not C_GetInfo or the reader list
    control("fail=CKR_DEVICE_ERROR\n")
    want("C_GetTokenInfo with fail=", GetTokenInfo(slot, C.byref(ti)), 0x30)
    n = UL(0)
    want("C_GetSlotList(TRUE) with fail=", GetSlotList(1, None, C.byref(n)), 0x30)
    want("C_GetSlotList(FALSE) with fail=", GetSlotList(0, None, C.byref(n)))
    want("C_GetInfo with fail=", GetInfo(C.byref(info)))
    control("")
    print("fault injection ok", flush=True)

    # removal
    control("removed=1\n")
    n = UL(16)
    lst = (UL * 16)()
    want("C_GetSlotList(TRUE) while removed", GetSlotList(1, lst, C.byref(n)))
    assert slot not in list(lst)[:n.value], "removed=1: the slot is still listed with a token"
    si = SlotInfo()
    want("C_GetSlotInfo while removed", GetSlotInfo(slot, C.byref(si)))
    assert not si.flags & 1, "removed=1: CKF_TOKEN_PRESENT still set"
    want("C_GetTokenInfo while removed", GetTokenInfo(slot, C.byref(ti)), 0xE0)
    h = UL()
    want("C_OpenSession while removed", OpenSession(slot, 6, None, None, C.byref(h)), 0xE0)
    want("C_SignInit on an old session while removed", sign_init(h1, k1), 0x32)
    control("removed=0\n")
    for i in range(2):  # "forever"
        want("C_SignInit on a pre-removal session after return (#%d)" % (i + 1), sign_init(h1, k1), 0xB3)
        want("C_GetSessionInfo on a pre-removal session (#%d)" % (i + 1),
             GetSessionInfo(h2, C.byref(SessionInfo())), 0xB3)
    h3 = open_session()
    assert h3 not in (h1, h2), "session handles must not be reused across a removal"
    assert session_state(h3) == 2, \
        "after a removal the token must be logged out (state %d, want CKS_RW_PUBLIC_SESSION)" % session_state(h3)
    login(h3)
    want("C_SignInit with a key handle from before the removal", sign_init(h3, k1), 0x60)
    k2 = find_key(h3)
    assert k2 != k1, "object handles must change across a removal"
    want("C_Sign on a new session after the return", sign(h3, k2))
    want("C_CloseSession on a pre-removal session", CloseSession(h1), 0xB3)
    print("removal ok", flush=True)

    # a removal while a slow C_Sign sleeps makes it fail
    control("sign_delay_ms=600\n")
    th = threading.Thread(target=lambda: res.update(rv=sign(h3, k2)))
    th.start()
    time.sleep(0.15)
    control("sign_delay_ms=600\nremoved=1\n")
    th.join(10)
    want("C_Sign when the token goes during the delay", res["rv"], 0x32)
    control("")
    want("C_SignInit on that session afterwards", sign_init(h3, k2), 0xB3)
    h4 = open_session()
    login(h4)
    k4 = find_key(h4)
    print("removal during a slow signature ok", flush=True)

    # two quick signatures: the second one's stats write is still pending, C_Finalize flushes it
    want("C_Sign before C_Finalize", sign(h4, k4))
    want("C_Sign before C_Finalize", sign(h4, k4))
    want("C_Finalize", Finalize(None))
    got = stats_now()
    assert got == counts, "stats at C_Finalize: %s, expected %s" % (got, counts)
    print("in-process checks passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--inproc":
        _inproc_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: %s --inproc JSON (run by test_shim_in_process)" % sys.argv[0])
