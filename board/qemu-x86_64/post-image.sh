#!/bin/sh
# post-image.sh IMAGES_DIR: assembles the flashable disk image from bzImage
# and rootfs.cpio.zst (Buildroot's BR2_ROOTFS_POST_IMAGE_SCRIPT).
#
#   farmgate-BOARD.img           GPT: partition 1 "fgboot", the EFI System
#                                Partition (systemd-boot, the kernel, the
#                                initramfs); the rest of the disk is left
#                                free for the data partition the first boot
#                                makes ("fgdata", ext4)
#   farmgate-BOARD.img.xz        the same, compressed: xzcat ... | dd of=/dev/sdX
#
# (BOARD: qemu-x86_64, or pc-x86_64, whose board directory links here)
set -eu
I=$1
ESP_MB=${CONFIG_IMAGE_ESP_SIZE_MB:-64}
DISK_MB=${CONFIG_IMAGE_DISK_SIZE_MB:-256}
CMDLINE=${CONFIG_IMAGE_CMDLINE:-console=ttyS0,115200 quiet}
IMG=$I/farmgate-${CONFIG_BOARD:-qemu-x86_64}.img
ESP=$I/esp.vfat
SDBOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[ -f "$SDBOOT" ] || { echo "post-image: $SDBOOT missing (make deps installs systemd-boot-efi)" >&2; exit 1; }
[ $((ESP_MB + 2)) -lt "$DISK_MB" ] || { echo "post-image: the disk must be larger than the ESP" >&2; exit 1; }

# the EFI System Partition: FAT32, systemd-boot as the removable-media loader
rm -f "$ESP"
truncate -s "${ESP_MB}M" "$ESP"
mkfs.vfat -F 32 -n FGBOOT -i 46474254 "$ESP" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$ESP" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$ESP" "$SDBOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$ESP" "$I/bzImage" ::/vmlinuz
mcopy -i "$ESP" "$I/rootfs.cpio.zst" ::/initrd.zst
printf 'default farmgate.conf\ntimeout 0\neditor no\nconsole-mode keep\n' >"$I/loader.conf"
printf 'title Farmgate %s\nlinux /vmlinuz\ninitrd /initrd.zst\noptions %s\n' \
	"${FG_VERSION:-}" "$CMDLINE" >"$I/farmgate.conf"
mcopy -i "$ESP" "$I/loader.conf" ::/loader/loader.conf
mcopy -i "$ESP" "$I/farmgate.conf" ::/loader/entries/farmgate.conf
rm -f "$I/loader.conf" "$I/farmgate.conf"

# the disk: GPT with the ESP at 1 MiB; the rest is free for the data partition
rm -f "$IMG"
truncate -s "${DISK_MB}M" "$IMG"
sfdisk -q "$IMG" >/dev/null <<PT
label: gpt
first-lba: 2048
start=2048, size=$((ESP_MB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="fgboot"
PT
dd if="$ESP" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$ESP"
xz -T0 -6 -f -k "$IMG"
ls -l "$I/bzImage" "$I/rootfs.cpio.zst" "$IMG" "$IMG.xz" | awk '{printf "  IMAGE   %-40s %9d bytes\n", $9, $5}'
