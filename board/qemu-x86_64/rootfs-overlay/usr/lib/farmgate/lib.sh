# Farmgate appliance: shell functions shared by rcS, rcK, farmgate-system and
# the console. Sourced, never run. Configuration values are never evaluated:
# they are read line by line and used only as quoted arguments.
# busybox-static runs its own applets before anything in PATH: the tools that
# are not busybox's (mke2fs, e2fsck, sfdisk) are called by their full path.

FG_DATA=/data
FG_CFG=/data/farmgate/farmgate.json
FG_DATALABEL=fgdata
FG_BOOTLABEL=fgboot
# GPT type "Linux filesystem"
FG_LINUX_GUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4

# say MESSAGE: to the console with the uptime, and to syslog once it runs
say() {
	read -r up _ </proc/uptime
	echo "[$up] farmgate: $*" >/dev/console
	[ -S /dev/log ] && logger -t farmgate "$*"
	return 0
}

# part_by_name NAME: the block device (vda2) whose GPT partition name is NAME
part_by_name() {
	for u in /sys/class/block/*/uevent; do
		if grep -qx "PARTNAME=$1" "$u" 2>/dev/null; then
			d=${u%/uevent}
			echo "${d##*/}"
			return 0
		fi
	done
	return 1
}

# disk_of PART: the whole disk holding partition PART (vda2 -> vda)
disk_of() {
	d=$(readlink -f "/sys/class/block/$1/..")
	echo "${d##*/}"
}

# blank_disk: the first whole disk with no partition table and no filesystem
blank_disk() {
	for s in /sys/block/vd* /sys/block/sd* /sys/block/nvme*n*; do
		[ -e "$s" ] || continue
		n=${s##*/}
		[ "$(cat "$s/removable" 2>/dev/null)" = 1 ] && continue
		parts=
		for q in "$s/$n"*; do [ -e "$q" ] && parts=1; done
		[ -n "$parts" ] && continue
		/usr/sbin/sfdisk -d "/dev/$n" >/dev/null 2>&1 && continue
		zeroed "$n" || continue
		echo "$n"
		return 0
	done
	return 1
}

# zeroed DEV: the first MiB of /dev/DEV is all zero bytes (never written)
zeroed() {
	[ "$(dd if="/dev/$1" bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]
}

# is_ext DEV: /dev/DEV holds an ext2/3/4 file system (superblock magic 0xEF53)
is_ext() {
	[ "$(dd if="/dev/$1" bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '2/1 "%02x"')" = 53ef ]
}

# wait_dev NAME: the device node appears (devtmpfs) within 5 s
wait_dev() {
	i=0
	while [ ! -b "/dev/$1" ] && [ $i -lt 50 ]; do
		usleep 100000
		i=$((i + 1))
	done
	[ -b "/dev/$1" ]
}

# data_create: makes the data partition (GPT name fgdata) on the boot disk's
# free space, or on a blank disk, and formats it. Prints the partition.
data_create() {
	if boot=$(part_by_name "$FG_BOOTLABEL"); then
		disk=$(disk_of "$boot")
		# a disk image written to a bigger disk: move the backup GPT to its end
		/usr/sbin/sfdisk --relocate gpt-bak-std "/dev/$disk" >/dev/null 2>&1
		echo "type=$FG_LINUX_GUID, name=\"$FG_DATALABEL\"" |
			/usr/sbin/sfdisk -q --append "/dev/$disk" >/dev/null 2>&1 || return 1
	elif disk=$(blank_disk); then
		printf 'label: gpt\ntype=%s, name="%s"\n' "$FG_LINUX_GUID" "$FG_DATALABEL" |
			/usr/sbin/sfdisk -q "/dev/$disk" >/dev/null 2>&1 || return 1
	else
		return 1
	fi
	i=0
	until part=$(part_by_name "$FG_DATALABEL"); do
		[ $i -ge 50 ] && return 1
		usleep 100000
		i=$((i + 1))
	done
	wait_dev "$part" || return 1
	data_format "$part" || return 1
	is_ext "$part" || return 1
	echo "$part"
}

# data_format PART: a new ext4 file system labelled fgdata
data_format() {
	/usr/sbin/mke2fs -q -F -t ext4 -L "$FG_DATALABEL" -E lazy_itable_init=1,lazy_journal_init=1 \
		"/dev/$1" >/dev/null 2>&1
}

# boot_disk_wait: booted by UEFI from the flashable image, the disk that
# holds the partition fgboot is there, but a USB stick or a slow controller
# shows it seconds after its driver loaded (usb-storage waits a second
# before it scans). Up to 20 s, then on without it (the data partition is
# in RAM). A direct kernel boot has no boot partition and does not wait.
boot_disk_wait() {
	[ -d /sys/firmware/efi ] || return 0
	i=0
	until part_by_name "$FG_BOOTLABEL" >/dev/null; do
		if [ $i -ge 200 ]; then
			say "WARNING: booted by UEFI, but no partition \"$FG_BOOTLABEL\" appeared within 20 s"
			return 1
		fi
		[ $i = 20 ] && say "waiting for the boot disk (partition \"$FG_BOOTLABEL\")"
		usleep 100000
		i=$((i + 1))
	done
}

# data_mount: finds, creates on first boot, checks and mounts the data
# partition on /data. Falls back to RAM (loudly) rather than format a
# partition that holds something it cannot read.
data_mount() {
	boot_disk_wait
	if part=$(part_by_name "$FG_DATALABEL"); then
		wait_dev "$part"
		if ! is_ext "$part" && zeroed "$part"; then
			say "data partition /dev/$part is empty: formatting it"
			data_format "$part" || part=
		fi
	else
		say "first boot: creating the data partition"
		part=$(data_create) || part=
		[ -n "$part" ] && say "data partition /dev/$part created"
	fi
	if [ -n "$part" ]; then
		/usr/sbin/e2fsck -p "/dev/$part" >/dev/null 2>&1
		if [ $? -ge 4 ]; then
			say "data partition /dev/$part has errors e2fsck -p cannot fix: e2fsck -y"
			/usr/sbin/e2fsck -y "/dev/$part" >/dev/null 2>&1
		fi
		if mount -t ext4 -o noatime,nodev,nosuid "/dev/$part" "$FG_DATA"; then
			FG_DATAPART=$part
			return 0
		fi
		say "ERROR: cannot mount /dev/$part: it is left untouched"
	fi
	say "WARNING: no data partition: configuration, tokens and logs are in RAM and will not survive a reboot"
	mount -t tmpfs -o mode=0755,nodev,nosuid tmpfs "$FG_DATA"
	FG_DATAPART=
	return 1
}

# factory_reset_pending: true if a factory reset was asked for (marker)
factory_reset_pending() {
	[ -e "$FG_DATA/.factory-reset" ]
}

# factory_reset_now PART: erases every file of the data partition, then
# formats it. Called at boot, before any service has a file open there.
factory_reset_now() {
	# overwrite secrets and token objects before the blocks are freed
	find "$FG_DATA/secrets" "$FG_DATA/softhsm" "$FG_DATA/mgmt" -type f 2>/dev/null |
		while read -r f; do shred -f -z -n 1 "$f"; done
	sync
	umount "$FG_DATA" || return 1
	data_format "$1" || return 1
	mount -t ext4 -o noatime,nodev,nosuid "/dev/$1" "$FG_DATA"
}

# system_env: reads the configuration's "system" section through farmgated
# -S into FG_HOSTNAME, FG_NET_*, FG_NTP_SERVERS (defaults when it is absent
# or invalid). No eval: each known name is assigned as plain text, and a
# value with any byte outside [A-Za-z0-9.:/_ -] is refused.
system_env() {
	FG_HOSTNAME=farmgate
	FG_NET_IF=eth0
	FG_NET_MODE=dhcp
	FG_NET_ADDRESS=''
	FG_NET_GATEWAY=''
	FG_NET_DNS=''
	FG_NTP_SERVERS=''
	out=$(/usr/sbin/farmgated -S -c "$FG_CFG" 2>/run/farmgate-system.err) || {
		say "system settings: $FG_CFG refused ($(head -c 300 /run/farmgate-system.err)): DHCP on eth0"
		return 0
	}
	echo "$out" | {
		while IFS='=' read -r k v; do
			v=${v#\'}
			v=${v%\'}
			case "$v" in *[!A-Za-z0-9.:/_\ -]*) continue ;; esac
			echo "$k=$v"
		done
	} >/run/farmgate-system.env
	while IFS='=' read -r k v; do
		case "$k" in
		FG_HOSTNAME) FG_HOSTNAME=$v ;;
		FG_NET_IF) FG_NET_IF=$v ;;
		FG_NET_MODE) FG_NET_MODE=$v ;;
		FG_NET_ADDRESS) FG_NET_ADDRESS=$v ;;
		FG_NET_GATEWAY) FG_NET_GATEWAY=$v ;;
		FG_NET_DNS) FG_NET_DNS=$v ;;
		FG_NTP_SERVERS) FG_NTP_SERVERS=$v ;;
		esac
	done </run/farmgate-system.env
}

# addresses: the IPv4 addresses of the network interface, one per line
addresses() {
	ip -4 -o addr show dev "${FG_NET_IF:-eth0}" 2>/dev/null | sed -n 's/.* inet \([0-9.]*\).*/\1/p'
}
