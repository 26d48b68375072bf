# Shell functions shared by iso.sh and disk.sh (sourced; POSIX sh).
#
# Settings from the stage's environment: MLOS_VERSION, MLOS_PROFILE, MLOS_GRUB_TIMEOUT.

# GRUB modules of both core images: enough to find a file system by label or UUID on an
# ISO, MBR or GPT disk, read FAT/iso9660, talk over the serial port and boot Linux.
GRUB_MODULES="iso9660 part_msdos part_gpt fat normal configfile linux search search_label
	search_fs_uuid serial terminal echo test ls cat"
# UEFI: a graphics mode for the kernel's handover (else GRUB warns "no suitable video mode").
GRUB_EFI_MODULES="efi_gop"

# render TEMPLATE ROOT: a GRUB config from stage-tools/image with the placeholders filled in.
render() {
	sed -e "s|@ROOT@|$2|g" -e "s|@LABEL@|${MLOS_ISO_LABEL:-}|g" -e "s|@VERSION@|$MLOS_VERSION|g" \
		-e "s|@PROFILE@|$MLOS_PROFILE|g" -e "s|@TIMEOUT@|${MLOS_GRUB_TIMEOUT:-3}|g" "$1"
}

# early_config SEARCH: the config built into GRUB's core images (SEARCH: search arguments):
# find the MLOS file system, then read its menu. (GRUB's embedded config takes no comments.)
early_config() {
	cat <<-CFG
	search --no-floppy --set=root $1
	set prefix=(\$root)/boot/grub
	configfile (\$root)/boot/grub/grub.cfg
	CFG
}

# volume_id TEXT: a FAT volume id (8 hex digits) derived from TEXT, so it is the same on
# every build of the same release and differs between releases.
volume_id() {
	printf '%s' "$1" | sha256sum | cut -c1-8
}

# guid TEXT: a GUID derived from TEXT (the same way).
guid() {
	printf '%s' "$1" | sha256sum |
		sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/'
}

# efi_fat IMAGE SIZE_KIB VOLID LABEL SRC=DEST...: a FAT image holding the given files, with
# a fixed volume id, --invariant dates, and every file and directory dated SOURCE_DATE_EPOCH
# (mtools dates what it creates from SOURCE_DATE_EPOCH; without -m it ignores the files' mtimes).
# FAT stores local time: mtools runs with TZ=UTC, so the caller's time zone does not leak in.
efi_fat() {
	image=$1 size=$2 volid=$3 fatlabel=$4
	shift 4
	TZ=UTC mkfs.fat -C --invariant -i "$volid" -n "$fatlabel" "$image" "$size" >/dev/null
	for pair in "$@"; do
		src=${pair%%=*} dest=${pair#*=}
		dir=$(dirname "$dest")
		parent=
		for part in $(echo "$dir" | tr '/' ' '); do
			parent=$parent/$part
			TZ=UTC mmd -D s -i "$image" "::$parent" 2>/dev/null || true
		done
		TZ=UTC mcopy -i "$image" "$src" "::$dest"
	done
}
