#!/bin/sh
# mmdebstrap customize hook of the OCI images' root filesystems: nothing from the build that
# would make two builds differ, and nothing a container runtime provides itself.
#
#   sh oci-clean.sh ROOT
set -eu
root=$1
# The runtime writes these when the container starts.
printf '' >"$root/etc/hostname"
printf '' >"$root/etc/resolv.conf"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
# No logs, caches or lists from the build; empty directories stay.
find "$root/var/log" "$root/var/cache/apt" "$root/var/lib/apt/lists" -type f -delete
rm -f "$root/var/cache/ldconfig/aux-cache" "$root/var/cache/debconf/"*-old \
	"$root/var/lib/dpkg/"*-old "$root/etc/"*- 2>/dev/null || true
rm -rf "$root/tmp/"* "$root/var/tmp/"* \
	"$root/var/cache/apt/archives/partial" "$root/var/lib/apt/lists/partial"
