#!/bin/sh
# post-build.sh TARGET_DIR: board customisation of the target tree, after
# tools/mkimage.py has installed the binaries, libraries, modules and the
# rootfs overlay (Buildroot's BR2_ROOTFS_POST_BUILD_SCRIPT). The CONFIG_*
# values of the build's Kconfig are in the environment.
set -eu
T=$1

# the kernel runs /init from the initramfs: busybox init
ln -sf sbin/init "$T/init"

# smart cards: pcscd supervised like the other services
if [ "${CONFIG_IMAGE_PKCS11_OPENSC:-n}" = y ]; then
	cat >"$T/etc/farmgate/run/pcscd" <<'RUN'
#!/bin/sh
exec /usr/sbin/pcscd --foreground --error
RUN
	chmod 755 "$T/etc/farmgate/run/pcscd"
	sed -i 's|^::respawn:/usr/sbin/fg-supervise farmgated$|::respawn:/usr/sbin/fg-supervise pcscd\n&|' \
		"$T/etc/inittab"
	mkdir -p "$T/run/pcscd"
fi
if [ "${CONFIG_IMAGE_PKCS11_SOFTHSM2:-n}" != y ]; then
	rm -rf "$T/etc/softhsm"
	# the factory configuration names the SoftHSM token: without it, none
	sed -i '/"tokens": \[/,/\],/d' "$T/etc/farmgate/default.json"
fi
chmod 0644 "$T/etc/farmgate/default.json"
