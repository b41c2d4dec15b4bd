#!/usr/bin/python3
"""make bench-image: the image's size and its boot-to-serving times under QEMU (TCG).

    tests/qemu_boottime.py --images DIR [--board qemu-x86_64|pc-x86_64] [--runs 3] [--out FILE]

For each boot path (qemu-x86_64: direct kernel boot, and the flashable disk under OVMF and
systemd-boot on a virtio disk; pc-x86_64: the flashable disk on a USB stick of a q35 machine
with an e1000e network card) and each run: a fresh 1 GiB disk, QEMU started, the time until
the proxy (port 80) and the web UI (port 443) both answer through the forwarded ports (first
boot: the data partition, the token and the UI certificate are made), then `reboot` typed on
the console and the time until both answer again. Writes a Markdown table (medians and every
run).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))
from qemu import Appliance, image_name  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--board", default="qemu-x86_64", choices=("qemu-x86_64", "pc-x86_64"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    out = a.out or os.path.join(a.images, "boot-times.md")
    img = image_name(a.board)
    pc = a.board == "pc-x86_64"
    sizes = {n: os.path.getsize(os.path.join(a.images, n))
             for n in ("bzImage", "rootfs.cpio.zst", img + ".xz")}
    rows = []
    work = tempfile.mkdtemp(prefix="fg-boottime-")
    try:
        for boot in ("efi",) if pc else ("direct", "efi"):
            first, again = [], []
            for i in range(a.runs):
                app = Appliance(a.images, os.path.join(work, "%s-%d" % (boot, i)), boot=boot, disk_mb=1024,
                                board=a.board, hardware="pc" if pc else "virtio")
                try:
                    app.start()
                    first.append(app.wait_serving(120))
                    app.wait_serial(r"farmgate: ready", 60)
                    again.append(app.reboot())
                finally:
                    app.stop()
                print("%s run %d: first boot %.1f s, reboot %.1f s" % (boot, i + 1, first[-1], again[-1]),
                      flush=True)
            rows.append((boot, first, again))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fmt = lambda xs: "%.1f s (%s)" % (statistics.median(xs), ", ".join("%.1f" % x for x in xs))  # noqa: E731
    text = ["# Farmgate image: size and boot times (%s, load %s)" % (
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "%.2f" % os.getloadavg()[0]), "",
            "| | figure |", "|---|---|",
            "| %s.xz | %.1f MB (%d bytes) |" % (img, sizes[img + ".xz"] / 1e6, sizes[img + ".xz"]),
            "| bzImage / rootfs.cpio.zst | %.1f MB / %.1f MB |" % (sizes["bzImage"] / 1e6,
                                                                 sizes["rootfs.cpio.zst"] / 1e6)]
    names = {"direct": "direct kernel boot",
             "efi": "USB stick and e1000e (q35), OVMF + systemd-boot" if pc else "disk image, OVMF + systemd-boot"}
    for boot, first, again in rows:
        text.append("| QEMU start to serving, %s, first boot: median (runs) | %s |" % (names[boot], fmt(first)))
        text.append("| `reboot` typed to serving again, %s | %s |" % (names[boot], fmt(again)))
    with open(out, "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
    print("written to " + out)


if __name__ == "__main__":
    main()
