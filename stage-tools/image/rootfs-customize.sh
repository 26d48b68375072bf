#!/bin/sh
# mmdebstrap customize hook for the MLOS root filesystem: configuration that belongs to the
# image rather than to a package, and removal of everything that would make two builds differ
# or two machines share an identity.
#
#   sh rootfs-customize.sh ROOT
set -eu
root=$1
components=$(echo "${MLOS_COMPONENTS:-main}" | tr ',' ' ')

# Where the installed system gets updates; the build itself used local mirrors only.
cat >"$root/etc/apt/sources.list" <<EOF
deb ${MLOS_MIRROR_URL} ${MLOS_SUITE} ${components}
EOF
cat >"$root/etc/apt/sources.list.d/mlos.sources" <<EOF
# The MLOS package archive. Enable it once the MLOS archive keyring (published with each
# release as mlos-archive-keyring.gpg) is installed at the Signed-By path.
Enabled: no
Types: deb
URIs: https://apt.mlos.example/
Suites: mlos
Components: main
Signed-By: /usr/share/keyrings/mlos-archive-keyring.gpg
EOF

echo "${MLOS_HOSTNAME:-mlos}" >"$root/etc/hostname"
cat >"$root/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	${MLOS_HOSTNAME:-mlos}
::1	localhost ip6-localhost ip6-loopback
EOF

# Identity is made on first boot: an empty machine-id makes systemd generate one (and run
# its first-boot units); no D-Bus machine id, no SSH host keys, no random seed.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed" \
	"$root"/etc/ssh/ssh_host_*

# cloud-init (Debian's) configures the machine from a NoCloud seed (a file system labelled
# cidata, or ds=nocloud on the kernel command line) or an OpenStack config drive. Without
# either, its generator (ds-identify) finds no data source and disables it for that boot, so a
# machine with no seed boots as fast as before. The data sources are named here so that
# cloud-init never probes the network for a metadata service nobody runs.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat >"$root/etc/cloud/cloud.cfg.d/90-mlos.cfg" <<'EOF'
# MLOS Linux: the data sources cloud-init looks for (see /usr/share/doc/cloud-init).
datasource_list: [NoCloud, ConfigDrive]
# Debian's list but growpart and resizefs (the root file system is a squashfs under an
# overlay; the disk's state partition, which holds the overlay's upper layer, is grown by the
# initramfs with systemd-repart and resize2fs before it is mounted) and ssh (no SSH server in
# the image, so no host keys to make; users-groups still installs each user's
# ssh_authorized_keys).
cloud_init_modules:
 - migrator
 - seed_random
 - bootcmd
 - write-files
 - disk_setup
 - mounts
 - set_hostname
 - update_hostname
 - update_etc_hosts
 - ca-certs
 - rsyslog
 - users-groups
# The image's own locale: nothing to generate.
locale: C.UTF-8
EOF

# e2fsprogs' scrubbing of ext4 LVM snapshots has nothing to do here (no LVM), and its reaper
# is an idle-priority oneshot that multi-user.target waits for: under load, or on one slow
# CPU, it can hold the boot short of multi-user.target indefinitely.
for unit in e2scrub_reap.service e2scrub_all.timer; do
	if [ -e "$root/usr/lib/systemd/system/$unit" ] || [ -e "$root/lib/systemd/system/$unit" ]; then
		mkdir -p "$root/etc/systemd/system"
		ln -sf /dev/null "$root/etc/systemd/system/$unit"
	fi
done
rm -f "$root/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service" \
	"$root/etc/systemd/system/timers.target.wants/e2scrub_all.timer"

# System extensions (systemd-sysext) from a disk: when a file system labelled MLOS-EXT appears,
# at boot or later, its *.raw images are linked into /run/extensions and merged over /usr and
# /opt, and what they bring is put to work: their tmpfiles.d (an extension's /etc defaults),
# their units loaded and the targets that want them started again (systemd 252's sysext does
# neither). Without such a disk nothing runs.
mkdir -p "$root/usr/lib/udev/rules.d" "$root/usr/lib/systemd/system" "$root/usr/libexec"
cat >"$root/usr/lib/udev/rules.d/90-mlos-extensions.rules" <<'EOF'
# A file system labelled MLOS-EXT holds system extensions: mlos-extensions.service merges them.
SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="MLOS-EXT", ENV{SYSTEMD_WANTS}+="mlos-extensions.service"
EOF
cat >"$root/usr/lib/systemd/system/mlos-extensions.service" <<'EOF'
[Unit]
Description=Merge the system extensions of the disk labelled MLOS-EXT
Documentation=man:systemd-sysext(8)
After=local-fs.target systemd-sysext.service
Before=multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/mlos-extensions
# systemd-sysext's own messages (what it merged, what it refused) on the console too.
Environment=SYSTEMD_LOG_TARGET=console
StandardOutput=journal+console
StandardError=journal+console
EOF
cat >"$root/usr/libexec/mlos-extensions" <<'EOF'
#!/bin/sh
# Merge the system extensions (*.raw) of the file system labelled MLOS-EXT and start what
# they enable. Run by mlos-extensions.service when udev sees that file system.
set -eu
disk=/dev/disk/by-label/MLOS-EXT
mnt=/run/mlos-extensions
mkdir -p "$mnt" /run/extensions
mountpoint -q "$mnt" || mount -o ro,nodev,nosuid,noexec "$disk" "$mnt"
found=""
for image in "$mnt"/*.raw; do
	[ -f "$image" ] || continue
	ln -sfn "$image" "/run/extensions/${image##*/}"
	found="$found ${image##*/}"
done
if [ -z "$found" ]; then
	echo "mlos-extensions: $disk holds no *.raw system extension; nothing merged"
	exit 0
fi
echo "mlos-extensions: merging$found"
systemd-sysext refresh
systemd-sysext list --no-pager
systemd-tmpfiles --create
systemctl daemon-reload
systemctl start --no-block sockets.target timers.target multi-user.target
echo "mlos-extensions: merged; units loaded"
EOF
chmod 0755 "$root/usr/libexec/mlos-extensions"

# No logs, caches or lists from the build; empty directories stay.
find "$root/var/log" "$root/var/cache/apt" "$root/var/lib/apt/lists" -type f -delete
rm -f "$root/var/cache/ldconfig/aux-cache" "$root/var/cache/debconf/"*-old \
	"$root/var/lib/dpkg/"*-old "$root/etc/"*- 2>/dev/null || true
rm -rf "$root/tmp/"* "$root/var/tmp/"*
# apt makes these (owned by _apt) when it next runs.
rm -rf "$root/var/cache/apt/archives/partial" "$root/var/lib/apt/lists/partial"
