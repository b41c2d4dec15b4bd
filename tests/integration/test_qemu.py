"""The firmware image booted under QEMU (TCG) and driven from the host.

Every test boots an image that make test built (build/qemu-x86_64/images, and
build/pc-x86_64/images for the PC test) on a disk of its own; the guest's serial
console is kept in build/<board>/runs/<test>/serial.log. The backends are Debian's nginx on
the host's loopback, which the guest reaches as 10.0.2.2; the proxy and the
web UI are reached through QEMU's forwarded ports. Release build only: the
image has the release binaries.
"""

import os
import re

from cac import EmulatedCac
from harness import release_only, wait_for
from pki import Pki, TlsNginx, parse_echo, sha1_hex, sha256_hex
from mgmt_client import PASSWORD
from qemu import API, GUEST_HOST, Appliance, GuestMgmt, add_farm, api_ok, image_dir, token_client_cert

TOKEN = "appliance"  # the factory configuration's SoftHSM token
SECURE_HOST = "secure.test"
# generous: TCG on a busy 2-core machine; the README has the measured figures
BOOT_BOUND_S = 60
# the PC image: OVMF reads the kernel and initramfs from an emulated USB stick, the generic
# kernel is XZ, and the e1000e's link comes up 5 s after its driver (about 26-31 s here)
PC_BOOT_BOUND_S = 120


def _runs_dir(env, name, board="qemu-x86_64"):
    d = os.path.join(env.build, board, "runs", name)
    os.makedirs(d, exist_ok=True)
    return d


def boot(env, name, boot="direct", disk_mb=256, forward=None, board="qemu-x86_64", hardware="virtio",
         bound=BOOT_BOUND_S):
    """Boots a fresh appliance; its serial log goes to build/BOARD/runs/NAME/."""
    runs = _runs_dir(env, name, board)
    serial = os.path.join(runs, "serial.log")
    if os.path.exists(serial):
        os.unlink(serial)  # one run's console per file
    app = Appliance(image_dir(env.build, board), env.mkdtemp("qemu"), boot=boot, disk_mb=disk_mb,
                    serial_log=serial, forward=forward, board=board, hardware=hardware)
    env.on_cleanup(app.stop)
    app.start()
    t = app.wait_ready(timeout=bound * 2)
    assert t < bound, "serving %.1f s after QEMU started (bound %d s)" % (t, bound)
    with open(os.path.join(runs, "boot-times.txt"), "a") as f:
        f.write("%s boot: serving %.2f s after QEMU started\n" % (boot, t))
    return app, t


def proxy_get(app, path, host=SECURE_HOST, timeout=30):
    """GET through the appliance's proxy port: (status, body)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def proxy_answers(app, path):
    try:
        return proxy_get(app, path, timeout=5)[0] == 200
    except OSError:
        return False


def secure_backend(env):
    """nginx on the host requiring a client certificate from ca; answers user=<name>
    for the certificate it maps. Returns (ca, nginx, backend certificate)."""
    ca = Pki(env, "ca")
    crt, key = ca.server_cert("secure-be", ["DNS:secure.internal"])
    return ca, crt, key


def provision_farm(env, app, admin, ca, crt, key):
    """Through the API, as an operator would: a key made on the appliance's token
    whose certificate the host's CA issues, and farm "secure" whose server is the
    host's nginx (requiring that client certificate), picked by the certificate's
    thumbprint and its own certificate pinned. Returns (nginx, certificate SHA-1)."""
    toks = api_ok(admin.get(API + "/tokens"), "tokens")["tokens"]
    assert [t["name"] for t in toks] == [TOKEN] and toks[0]["loggedIn"], toks
    cert = token_client_cert(admin, TOKEN, ca, env.tmp, "appliance-client", "farmgate-appliance")
    sha1 = sha1_hex(cert)
    ng = TlsNginx(env, crt, key, client_ca=ca.crt, users={sha1: "appliance"}, name="secure").start()
    add_farm(admin, {"name": "secure",
                     "servers": [{"address": GUEST_HOST, "httpsPort": ng.port, "hostName": "secure.internal",
                                  "certificatePin": sha256_hex(crt)}],
                     "protocol": {"preserveHostHeader": False, "clientCertHash": sha256_hex(cert)}},
             SECURE_HOST, https=True)
    return ng, sha1


def assert_through(app, ng, sha1, path):
    status, body = proxy_get(app, path)
    assert status == 200, "GET %s through the appliance: %d %r" % (path, status, body[:300])
    got = parse_echo(body)
    assert got.get("user") == "appliance" and got.get("uri") == path, \
        "nginx did not map the token's certificate: %r" % body
    lines = wait_for(lambda: [l for l in ng.access_lines() if path in l], timeout=10,
                     msg="nginx's access log line for " + path)
    assert ("fp=" + sha1.lower()) in lines[-1], lines


def pid_of(app, name):
    out = app.sh("pidof %s || true" % name)[1].split()
    return int(out[0]) if out else None


@release_only
def test_qemu_flashable_image_serves_through_the_token_keeps_config_and_restarts_the_daemon(env):
    """The flashable disk image (GPT, EFI System Partition with systemd-boot) boots under
    OVMF on a 1 GiB disk: the first boot makes the ext4 data partition from the rest of
    the disk (backup GPT moved to the end), creates the SoftHSM token and prints the setup
    code on the console; the proxy and the web UI answer through the forwarded ports (the
    UI's certificate verified). Through the API: setup, a key generated on the token, its
    CSR signed on the host, the certificate imported, a farm whose server is nginx on the
    host requiring that client certificate; a request through the appliance reaches it
    with the token's certificate. After a reboot from the console the farm is still there
    and still works. farmgated killed with SIGKILL comes back by itself (another PID) and
    serves again."""
    app, t = boot(env, "flashable", boot="efi", disk_mb=1024)
    code = app.setup_code()

    # the data partition: the rest of the 1 GiB disk, ext4, mounted on /data
    parts = app.sh("cat /proc/partitions")[1]
    sizes = {m.group(2): int(m.group(1)) for m in re.finditer(r"\s(\d+)\s+(vda\d*)\n", parts)}
    assert sizes.get("vda") == 1024 * 1024 and "vda1" in sizes and "vda2" in sizes, parts
    assert sizes["vda1"] + sizes["vda2"] > 1000 * 1024, "the data partition should fill the disk: %s" % sizes
    mounts = app.sh("grep ' /data ' /proc/mounts")[1]
    assert mounts.startswith("/dev/vda2 /data ext4 "), mounts
    rc, out = app.sh("/usr/sbin/sfdisk --verify /dev/vda", check=False)
    assert rc == 0 and "backup" not in out.lower(), "the GPT after the first boot: %s" % out

    # the UI, over TLS verified against the certificate it made
    gm = GuestMgmt(app, env.mkdtemp("mgmt"))
    anon = gm.client()
    r = anon.get("/")
    assert r.status == 200 and b"<html" in r.body.lower(), r.summary()
    st = api_ok(anon.get(API + "/auth/state"), "auth state")
    assert st["passwordSet"] is False, st
    admin = gm.setup(code)

    ca, crt, key = secure_backend(env)
    ng, sha1 = provision_farm(env, app, admin, ca, crt, key)
    assert_through(app, ng, sha1, "/through/the/appliance")
    # the key never left the token: SoftHSM holds it as sensitive, not extractable
    certs = api_ok(admin.get(API + "/tokens/%s/certificates" % TOKEN), "certificates")["certificates"]
    assert [c["sha1"] for c in certs] == [sha1], certs

    # reboot: the configuration, the token and the password are on the data partition
    t2 = app.reboot()
    assert t2 < BOOT_BOUND_S, "serving %.1f s after the reboot command" % t2
    assert "setup code:" not in app.serial(app.mark), "a password is set: no setup code after reboot"
    admin = gm.login()
    farm = api_ok(admin.get(API + "/farms/secure"), "farm secure after the reboot")
    assert farm["servers"][0]["address"] == GUEST_HOST, farm
    assert_through(app, ng, sha1, "/after/the/reboot")

    # supervision: farmgated killed is started again, and serves
    old = pid_of(app, "farmgated")
    assert old, "farmgated is not running"
    since = os.path.getsize(app.serial_log)
    app.sh("kill -9 %d" % old)
    app.wait_serial(r"farmgated exited \(status 137\), restarting", 30, since=since)
    new = wait_for(lambda: (lambda p: p if p and p != old else None)(pid_of(app, "farmgated")),
                   timeout=30, interval=0.5, msg="farmgated started again")
    assert new != old
    wait_for(lambda: proxy_answers(app, "/after/the/kill"), timeout=30, interval=0.5,
             msg="the proxy serving again after the kill")
    assert_through(app, ng, sha1, "/after/the/kill/2")
    log = app.guest_file("/data/log/messages")
    assert re.search(r"fg-supervise: farmgated exited \(status 137\)", log), log[-2000:]


@release_only
def test_qemu_pc_image_boots_from_a_usb_stick_with_an_intel_nic(env):
    """The pc-x86_64 image (Debian's generic kernel with PC drivers) as a user flashes it:
    written to a 1 GiB USB stick and booted by UEFI on a q35 machine whose only disk is that
    stick (usb-storage on an xHCI controller) and whose network card is an Intel e1000e.
    The stick shows up seconds after its driver loads: the first boot waits for it and makes
    the data partition on it (without the wait the appliance runs from RAM: tried). Set up
    through the UI's API, a farm to a backend on the host answers through the appliance.
    (A reboot finds the partition the same way, by name after the same wait; the qemu-x86_64
    tests reboot, and make bench-image reboots this image three times.)"""
    be = env.backend(name="pc-backend")
    app, t = boot(env, "pc-usb-stick", boot="efi", disk_mb=1024, board="pc-x86_64", hardware="pc",
                  bound=PC_BOOT_BOUND_S)
    code = app.setup_code()
    assert re.search(r"farmgate: Farmgate \S+ \(pc-x86_64, kernel \S+-amd64\)", app.serial()), \
        "the banner should name the board and Debian's generic kernel:\n%s" % app.serial()[-2000:]
    mounts = app.sh("grep ' /data ' /proc/mounts")[1]
    assert mounts.startswith("/dev/sda2 /data ext4 "), "the data partition on the stick: %r" % mounts
    disk = app.sh("readlink -f /sys/block/sda")[1].strip()
    assert "/usb" in disk, "sda should be the USB stick: %s" % disk
    nic = app.sh("readlink /sys/class/net/eth0/device/driver")[1].strip()
    assert nic.endswith("/e1000e"), "eth0's driver: %r" % nic

    admin = GuestMgmt(app, env.mkdtemp("mgmt")).setup(code)
    add_farm(admin, {"name": "pc", "servers": [{"address": GUEST_HOST, "httpPort": be.port}]}, "pc.test")
    path = "/through/the/stick"
    status, body = proxy_get(app, path, host="pc.test")
    assert status == 200, "GET %s through the appliance: %d %r" % (path, status, body[:300])
    assert len(be.requests_to(path)) == 1, "the backend on the host got: %s" % [q.target for q in be.requests]


VPCD_PORT = 35963  # the guest pcscd's virtual reader (vsmartcard's vpcd)
OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


@release_only
def test_qemu_smart_card_in_the_appliance_through_opensc_and_pcscd(env):
    """The image's OpenSC and pcscd (IMAGE_PKCS11_OPENSC): an emulated CAC card on the host
    (libcacard over a SoftHSM token, build/tests/tools/cac_vpcd) is inserted into the
    appliance's virtual reader (vpcd, reached through a forwarded port). OpenSC in the guest
    names it; a token "cac" added through PUT /config (its PIN in a root-only file typed on
    the console) and a farm whose clientCertHash is the card certificate's make the request
    through the appliance reach nginx on the host as the card's user. The key is on the card:
    farmgated signs through OpenSC, APDU by APDU, inside the guest."""
    app, _ = boot(env, "smart-card", forward={VPCD_PORT: None})
    admin = GuestMgmt(app, env.mkdtemp("mgmt")).setup(app.setup_code())
    ca = Pki(env, "ca")
    card = EmulatedCac(env, ca, cn="cac-user", start=False).attach(app.forward[VPCD_PORT])

    def card_label():
        rc, out = app.sh("farmgatectl token slots --module %s" % OPENSC, check=False, timeout=60)
        m = re.search(r"slot 0: Virtual PCD 00 00.*\n\s+token:\s+(\S.*?)\s*\n", out)
        return m.group(1) if rc == 0 and m and m.group(1) != "(none)" else None

    label = wait_for(card_label, timeout=60, interval=1, msg="OpenSC in the guest seeing the card")
    app.sh("umask 077; printf %%s '%s' > /data/secrets/cac.pin" % card.pin)

    cfg = api_ok(admin.get(API + "/config"), "GET /config")
    cfg["tokens"].append({"name": "cac", "module": OPENSC, "uri": "pkcs11:token=" + label.replace(" ", "%20"),
                          "pinFile": "/data/secrets/cac.pin"})
    api_ok(admin.put(API + "/config", cfg), "PUT /config with token cac")
    crt, key = ca.server_cert("badge-be", ["DNS:badge.internal"])
    ng = TlsNginx(env, crt, key, client_ca=ca.crt, users={card.sha1: "cac-user"}, name="badge").start()
    add_farm(admin, {"name": "badge",
                     "servers": [{"address": GUEST_HOST, "httpsPort": ng.port, "hostName": "badge.internal",
                                  "certificatePin": sha256_hex(crt)}],
                     "protocol": {"preserveHostHeader": False, "clientCertHash": card.sha1,
                                  "clientCertToken": "cac"}},
             "badge.test", https=True)
    status, body = proxy_get(app, "/with/the/card", host="badge.test", timeout=120)
    assert status == 200 and parse_echo(body).get("user") == "cac-user", \
        "GET through the appliance with the card's key: %d %r\n%s" % (
            status, body[:300], app.sh("tail -n 15 /data/log/messages")[1])
    toks = {t["name"]: t for t in api_ok(admin.get(API + "/tokens"), "tokens")["tokens"]}
    assert toks["cac"]["loggedIn"] and toks["cac"]["signatures"] >= 1, toks["cac"]


@release_only
def test_qemu_static_network_from_config_reboot_and_factory_reset_from_the_web_ui(env):
    """The configuration's "system" section (PUT /config) is applied at the next boot: a
    host name and a static address, gateway and DNS server replace DHCP. The web UI's
    reboot (POST /system/reboot with the password) reboots the appliance; the web UI's
    factory reset erases the data partition at the next boot: a new setup code, no
    password, the factory configuration (no farm, DHCP), a new SoftHSM token."""
    app, _ = boot(env, "factory-reset")
    first_code = app.setup_code()
    gm = GuestMgmt(app, env.mkdtemp("mgmt"))
    admin = gm.setup(first_code)
    sysinfo = api_ok(admin.get(API + "/system"), "GET /system")
    assert sysinfo.get("actions") == ["reboot", "factory-reset"], sysinfo
    old_serial = app.sh("ls /data/softhsm/tokens")[1].split()
    assert len(old_serial) == 1, old_serial

    cfg = api_ok(admin.get(API + "/config"), "GET /config")
    cfg["system"] = {"hostName": "edge-7",
                     "network": {"mode": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
                                 "dns": ["10.0.2.3"]}}
    api_ok(admin.put(API + "/config", cfg), "PUT /config with a static network")
    add_farm(admin, {"name": "kept", "servers": [{"address": GUEST_HOST, "httpPort": 9}]}, "kept.test")

    r = admin.post(API + "/system/reboot", {"password": "wrong password"})
    assert r.status == 403, "reboot with a wrong password: " + r.summary()
    app.reboot(trigger=lambda: api_ok(admin.post(API + "/system/reboot", {"password": PASSWORD}),
                                      "POST /system/reboot"))
    assert "reboot requested" in app.serial(app.mark), app.serial(app.mark)[-2000:]
    assert app.sh("hostname")[1].strip() == "edge-7"
    assert app.sh("pidof udhcpc", check=False)[0] != 0, "udhcpc runs despite mode static"
    addr = app.sh("ip -4 addr show dev eth0")[1]
    assert "inet 10.0.2.15/24" in addr and "dynamic" not in addr, addr
    assert "default via 10.0.2.2 dev eth0" in app.sh("ip route")[1]
    assert app.sh("cat /etc/resolv.conf")[1].split() == ["nameserver", "10.0.2.3"]
    admin = gm.login()
    assert "kept" in [f["name"] for f in api_ok(admin.get(API + "/farms"), "farms")]

    body = {"password": PASSWORD}
    r = admin.post(API + "/system/factory-reset", body)
    assert r.status == 400, "factory reset without the confirmation: " + r.summary()
    body["confirm"] = "factory-reset"
    app.reboot(trigger=lambda: api_ok(admin.post(API + "/system/factory-reset", body),
                                      "POST /system/factory-reset"))
    console = app.serial(app.mark)
    assert "factory reset: erasing the data partition" in console and "factory reset done" in console, \
        console[-3000:]
    code = app.setup_code()
    assert code != first_code, "the factory reset kept the setup code"
    gm = GuestMgmt(app, env.mkdtemp("mgmt"))  # a new certificate too
    anon = gm.client()
    assert api_ok(anon.get(API + "/auth/state"), "auth state")["passwordSet"] is False
    admin = gm.setup(code)
    assert api_ok(admin.get(API + "/farms"), "farms") == [], "the factory configuration has no farm"
    assert app.sh("hostname")[1].strip() == "farmgate"
    assert app.sh("pidof udhcpc", check=False)[0] == 0, "DHCP again after the factory reset"
    new_serial = app.sh("ls /data/softhsm/tokens")[1].split()
    assert len(new_serial) == 1 and new_serial != old_serial, (old_serial, new_serial)
    assert app.sh("ls /data/.factory-reset", check=False)[0] != 0
