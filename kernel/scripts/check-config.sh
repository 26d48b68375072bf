#!/bin/sh
# check-config.sh CONFIG FRAGMENT...: every option a fragment sets must be in the resolved
# configuration exactly so. Kconfig silently drops options whose dependencies are missing.
set -eu
config=$1; shift
bad=0
for fragment in "$@"; do
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			if ! grep -qxF "$line" "$config"; then
				option=${line%%=*}
				got=$(grep -E "^($option=|# $option is not set)" "$config" || echo "absent")
				echo "error: $(basename "$fragment") asks for $line but the resolved configuration has: $got" >&2
				bad=1
			fi ;;
		"# CONFIG_"*" is not set")
			option=${line#"# "}; option=${option%% *}
			if grep -q "^$option=" "$config"; then
				echo "error: $(basename "$fragment") turns $option off but it is $(grep "^$option=" "$config")" >&2
				bad=1
			fi ;;
		esac
	done < "$fragment"
done
if [ "$bad" -ne 0 ]; then
	echo "error: Kconfig dropped options (missing dependencies?); fix the fragment" >&2
	exit 1
fi
echo "configuration: every fragment option is set"
