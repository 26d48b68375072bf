#!/bin/sh
# Compile, link and run a C program with the pinned toolchain; record what was used.
set -eu
cc -O2 -g -ffile-prefix-map="$PWD"=. -o /out/hello /in/src/hello.c
/out/hello > hello.out
grep -q "MLOS toolchain check" hello.out
{
	echo "# toolchain of the builder environment"
	dpkg-query -W -f '${Package} ${Version}\n' gcc-12 binutils libc6-dev make dpkg-dev
	echo "# output of /out/hello"
	cat hello.out
} > /out/toolchain.txt
