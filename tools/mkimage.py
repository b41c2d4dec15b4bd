#!/usr/bin/python3
"""Build a board's firmware image (make image), in Buildroot's shape.

    tools/mkimage.py --build O --board board/NAME

Reads O/.config (Kconfig) and, into O/image and O/images:
 1. the kernel: IMAGE_KERNEL_PACKAGE from Debian (apt-get download into
    O/dl, cached, never installed here), extracted into O/image/kernel;
 2. the target tree O/image/target: busybox-static and its applet links,
    farmgated, farmgatectl and farmgate-mgmt (stripped), the PKCS#11 modules
    chosen in Kconfig, the tools the init scripts need (mke2fs, e2fsck,
    sfdisk), every shared library any of them loads (found with ldd, kept at
    its Debian path so compiled-in paths still work), the kernel modules of
    IMAGE_KERNEL_MODULES with their dependencies, and the board's rootfs
    overlay;
 3. board/NAME/post-build.sh TARGET_DIR;
 4. O/images/bzImage and O/images/rootfs.cpio.zst (newc, every file owned by
    root, device nodes written directly, so no root is needed to build);
 5. board/NAME/post-image.sh IMAGES_DIR (the disk image).
"""

import argparse
import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys

sys.dont_write_bytecode = True

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what the init scripts run besides busybox (Debian paths)
SYSTEM_TOOLS = ["/usr/sbin/mke2fs", "/usr/sbin/e2fsck", "/usr/sbin/sfdisk"]
SYSTEM_FILES = ["/etc/mke2fs.conf", "/etc/ssl/certs/ca-certificates.crt"]

PKCS11 = {
    "IMAGE_PKCS11_SOFTHSM2": {
        "files": ["/usr/lib/softhsm/libsofthsm2.so"],
        "optional": [],
    },
    "IMAGE_PKCS11_OPENSC": {
        # OpenSC dlopen()s the PC/SC client library: ldd cannot see it
        "files": ["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "/usr/sbin/pcscd",
                  "/usr/lib/x86_64-linux-gnu/libpcsclite.so.1"],
        # the reader drivers that are installed: CCID (USB readers), vpcd (virtual)
        "optional": ["/usr/lib/pcsc/drivers", "/etc/reader.conf.d/vpcd", "/etc/libccid_Info.plist",
                     "/etc/opensc/opensc.conf"],
    },
}


def die(msg):
    sys.exit("mkimage: " + msg)


def say(msg):
    print("  IMAGE   " + msg, flush=True)


def read_config(path):
    cfg = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$", line.strip())
            if not m:
                continue
            v = m.group(2)
            if v.startswith('"'):
                v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            cfg[m.group(1)] = v
    return cfg


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# --------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------

def resolve_kernel_package(name):
    """A metapackage (linux-image-cloud-amd64) -> its ABI package."""
    if re.search(r"-\d+\.\d+\.\d+-\d+-", name):
        return name
    out = subprocess.run(["apt-cache", "depends", name], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    die("cannot resolve kernel package %s (apt-cache depends); is it a Debian package?" % name)


def fetch_kernel(cfg, build):
    pkg = resolve_kernel_package(cfg.get("IMAGE_KERNEL_PACKAGE", "linux-image-cloud-amd64"))
    dl = os.path.join(build, "dl")
    os.makedirs(dl, exist_ok=True)
    debs = glob.glob(os.path.join(dl, pkg + "_*.deb"))
    if not debs:
        say("download " + pkg)
        # as root, apt's sandbox user cannot write here: that warning is noise
        run(["apt-get", "download", "-q", pkg], cwd=dl, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        debs = glob.glob(os.path.join(dl, pkg + "_*.deb"))
        if not debs:
            die("apt-get download %s left no .deb in %s" % (pkg, dl))
    deb = sorted(debs)[-1]
    kdir = os.path.join(build, "image", "kernel")
    stamp = os.path.join(kdir, ".from")
    if not os.path.exists(stamp) or open(stamp).read() != deb:
        shutil.rmtree(kdir, ignore_errors=True)
        os.makedirs(kdir)
        say("extract " + os.path.basename(deb))
        run(["dpkg-deb", "-x", deb, kdir])
        with open(stamp, "w") as f:
            f.write(deb)
    kvers = os.listdir(os.path.join(kdir, "lib", "modules"))
    if len(kvers) != 1:
        die("expected one kernel version in %s, found %s" % (deb, kvers))
    kver = kvers[0]
    if not os.path.exists(os.path.join(kdir, "lib", "modules", kver, "modules.dep")):
        run(["depmod", "-b", kdir, kver])  # the .deb ships no modules.dep
    return kdir, kver, os.path.basename(deb)


def module_closure(kdir, kver, names):
    """insmod-ordered .ko paths (relative to lib/modules/KVER) for names."""
    mods = []
    for name in names:
        out = subprocess.run(["modprobe", "-d", kdir, "-S", kver, "--show-depends", name],
                             capture_output=True, text=True)
        if out.returncode != 0:
            die("kernel module %s: %s" % (name, out.stderr.strip()))
        for line in out.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                rel = os.path.relpath(parts[1], os.path.join(kdir, "lib", "modules", kver))
                if rel not in mods:
                    mods.append(rel)
    return mods


# --------------------------------------------------------------------------
# target tree
# --------------------------------------------------------------------------

class Target:
    def __init__(self, path):
        self.path = path
        self.libs = set()

    def dest(self, p):
        return os.path.join(self.path, p.lstrip("/"))

    def mkdir(self, p, mode=0o755):
        d = self.dest(p)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, mode)

    def copy(self, src, dst=None, mode=None, strip=False):
        """Copies src (following links) to dst (default: the same path)."""
        d = self.dest(dst or src)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.lexists(d):
            os.unlink(d)
        if strip:
            run(["strip", "--strip-unneeded", "-o", d, src])
        else:
            shutil.copy2(src, d)
        os.chmod(d, mode if mode is not None else stat.S_IMODE(os.stat(src).st_mode))

    def copy_tree(self, src, dst=None):
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            base = os.path.join(dst or src, rel) if rel != "." else (dst or src)
            self.mkdir(base)
            for n in filenames:
                s = os.path.join(dirpath, n)
                if os.path.islink(s):
                    self.symlink(os.readlink(s), os.path.join(base, n))
                else:
                    self.copy(s, os.path.join(base, n))
                    if is_elf(s):
                        self.add_libs(s)

    def symlink(self, target, link):
        d = self.dest(link)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.lexists(d):
            os.unlink(d)
        os.symlink(target, d)

    def add_libs(self, elf):
        """Every shared library elf needs, at its host path, once."""
        out = subprocess.run(["ldd", elf], capture_output=True, text=True)
        if "not a dynamic executable" in out.stdout + out.stderr or "statically linked" in out.stdout:
            return
        if out.returncode != 0:
            die("ldd %s: %s" % (elf, out.stderr.strip()))
        for line in out.stdout.splitlines():
            m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if not m:
                if "not found" in line:
                    die("ldd %s: %s" % (elf, line.strip()))
                continue
            path = m.group(m.lastindex)
            if path in self.libs:
                continue
            self.libs.add(path)
            self.copy(path)


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def skeleton(t):
    for d in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys",
              "dev", "run", "tmp", "data", "mnt", "root", "var"]:
        t.mkdir(d)
    os.chmod(t.dest("tmp"), 0o1777)
    os.chmod(t.dest("root"), 0o700)
    # merged /usr, as Debian 12: a library found by ldd at /lib/... or
    # /usr/lib/... is at the same path in the image
    for d in ["bin", "sbin", "lib", "lib64"]:
        t.symlink("usr/" + d, d)
    t.symlink("/run", "var/run")
    t.symlink("/data/log", "var/log")
    t.symlink("/tmp", "var/tmp")


def install_busybox(t):
    bb = "/bin/busybox"
    ldd = subprocess.run(["ldd", bb], capture_output=True, text=True) if os.path.exists(bb) else None
    if not ldd or "not a dynamic executable" not in ldd.stdout + ldd.stderr:
        die("/bin/busybox is not busybox-static (make deps installs it)")
    t.copy(bb, "/bin/busybox", mode=0o755)
    out = subprocess.run([bb, "--list-full"], capture_output=True, text=True, check=True).stdout
    for path in out.split():
        if path.endswith("busybox"):
            continue
        rel = os.path.relpath("/bin/busybox", os.path.dirname("/" + path))
        t.symlink(rel, path)


def install_kernel_modules(t, kdir, kver, names):
    mods = module_closure(kdir, kver, names)
    src = os.path.join(kdir, "lib", "modules", kver)
    for rel in mods:
        t.copy(os.path.join(src, rel), "/lib/modules/%s/%s" % (kver, rel), mode=0o644)
    for n in ["modules.builtin", "modules.builtin.modinfo", "modules.order"]:
        if os.path.exists(os.path.join(src, n)):
            t.copy(os.path.join(src, n), "/lib/modules/%s/%s" % (kver, n), mode=0o644)
    run(["depmod", "-b", t.path, kver])
    return mods


def write(t, path, text, mode=0o644):
    d = t.dest(path)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    with open(d, "w") as f:
        f.write(text)
    os.chmod(d, mode)


# --------------------------------------------------------------------------
# initramfs: a newc cpio written here (root-owned, device nodes, fixed times)
# --------------------------------------------------------------------------

def cpio_newc(root, out, mtime, devices):
    ino = [1]

    def entry(f, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            ino[0], mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0))
        ino[0] += 1
        f.write(hdr.encode() + name_b)
        f.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        f.write(data)
        f.write(b"\0" * ((4 - len(data) % 4) % 4))

    with open(out, "wb") as f:
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for n in dirnames + sorted(filenames):
                paths.append(os.path.join(dirpath, n))
        for p in sorted(paths):
            name = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                entry(f, name, stat.S_IFLNK | 0o777, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                entry(f, name, st.st_mode, nlink=2)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as g:
                    entry(f, name, st.st_mode, g.read())
        for name, mode, major, minor in devices:
            entry(f, name, mode, rdev=(major, minor))
        entry(f, "TRAILER!!!", 0)


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--board", required=True)
    ap.add_argument("--version", default="unknown")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    board = os.path.abspath(a.board)
    cfg = read_config(os.environ.get("KCONFIG_CONFIG", os.path.join(build, ".config")))
    if cfg.get("BOARD", "host") == "host":
        die("the host board has no image: make qemu_x86_64_defconfig first")

    kdir, kver, kdeb = fetch_kernel(cfg, build)
    tdir = os.path.join(build, "image", "target")
    shutil.rmtree(tdir, ignore_errors=True)
    t = Target(tdir)
    skeleton(t)
    install_busybox(t)

    for name in ["farmgated", "farmgatectl", "farmgate-mgmt"]:
        src = os.path.join(build, name)
        t.copy(src, "/usr/sbin/" + name, mode=0o755, strip=True)
        t.add_libs(src)
    for tool in SYSTEM_TOOLS:
        t.copy(tool, mode=0o755)
        t.add_libs(tool)
    for f in SYSTEM_FILES:
        if os.path.exists(f):
            t.copy(f, mode=0o644)
    chosen = []
    for opt, spec in PKCS11.items():
        if cfg.get(opt) != "y":
            continue
        chosen.append(opt)
        for f in spec["files"]:
            if not os.path.exists(f):
                die("%s needs %s (make deps installs it)" % (opt, f))
            t.copy(f)
            t.add_libs(f)
        for f in spec["optional"]:
            if os.path.isdir(f):
                t.copy_tree(f)
            elif os.path.exists(f):
                t.copy(f)
    mods = install_kernel_modules(t, kdir, kver, cfg.get("IMAGE_KERNEL_MODULES", "").split())

    overlay = os.path.join(board, "rootfs-overlay")
    if os.path.isdir(overlay):
        t.copy_tree(overlay, "/")
    modnames = cfg.get("IMAGE_KERNEL_MODULES", "").split()
    write(t, "/etc/modules", "".join(m + "\n" for m in modnames))
    write(t, "/etc/farmgate/build.conf",
          "# written by tools/mkimage.py from the build's Kconfig\n"
          "FG_BOARD=%s\nFG_VERSION=%s\nFG_KERNEL=%s\nFG_CONSOLE_SHELL=%s\nFG_SOFTHSM2=%s\n"
          "FG_OPENSC=%s\n" % (cfg["BOARD"], a.version, kver,
                              cfg.get("IMAGE_CONSOLE_SHELL", "n"),
                              cfg.get("IMAGE_PKCS11_SOFTHSM2", "n"),
                              cfg.get("IMAGE_PKCS11_OPENSC", "n")))
    write(t, "/etc/os-release",
          'NAME="Farmgate"\nID=farmgate\nVERSION_ID="%s"\nPRETTY_NAME="Farmgate %s (%s)"\n'
          % (a.version, a.version, cfg["BOARD"]))

    env = dict(os.environ, TARGET_DIR=tdir, BUILD_DIR=build, BOARD_DIR=board,
               FG_VERSION=a.version)
    for k, v in cfg.items():
        env["CONFIG_" + k] = v
    post_build = os.path.join(board, "post-build.sh")
    if os.path.exists(post_build):
        say("post-build.sh")
        run([post_build, tdir], env=env)

    images = os.path.join(build, "images")
    os.makedirs(images, exist_ok=True)
    kimg = glob.glob(os.path.join(kdir, "boot", "vmlinuz-*"))[0]
    shutil.copy2(kimg, os.path.join(images, "bzImage"))
    with open(os.path.join(images, "cmdline"), "w") as f:
        f.write(cfg.get("IMAGE_CMDLINE", "console=ttyS0,115200") + "\n")
    mtime = int(subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"],
                               capture_output=True, text=True).stdout.strip() or 0)
    cpio = os.path.join(images, "rootfs.cpio")
    cpio_newc(tdir, cpio, mtime, [("dev/console", stat.S_IFCHR | 0o600, 5, 1),
                                  ("dev/null", stat.S_IFCHR | 0o666, 1, 3)])
    say("rootfs.cpio.zst")
    run(["zstd", "-q", "-f", "-19", "-T0", "--rm", cpio, "-o", cpio + ".zst"])

    with open(os.path.join(images, "manifest.txt"), "w") as f:
        f.write("kernel %s (%s)\n" % (kver, kdeb))
        f.write("modules %s\n" % " ".join(os.path.basename(m) for m in mods))
        f.write("pkcs11 %s\n" % " ".join(chosen))
        for lib in sorted(t.libs):
            f.write("lib %s %s\n" % (lib, hashlib.sha256(open(lib, "rb").read()).hexdigest()[:16]))

    post_image = os.path.join(board, "post-image.sh")
    if os.path.exists(post_image):
        say("post-image.sh")
        run([post_image, images], env=env)


if __name__ == "__main__":
    main()
