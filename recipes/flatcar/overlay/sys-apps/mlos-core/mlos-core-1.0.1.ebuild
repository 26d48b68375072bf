# Copyright 2025 MLOS Linux maintainers
# Distributed under the terms of the Apache License, Version 2.0

EAPI=8

DESCRIPTION="MLOS host agent: records PSI pressure and the MLOS kernel version in /run/mlos"
HOMEPAGE="https://mlos.example/"
# The agent ships in the mlos-services source archive, and has its version.
SRC_URI="https://downloads.mlos.example/sources/mlos-services-${PV}.tar.gz"
S="${WORKDIR}/mlos-services-${PV}"

LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="~amd64"

src_install() {
	exeinto /usr/libexec/mlos
	doexe files/usr/libexec/mlos/mlos-core
	insinto /usr/lib/systemd/system
	doins files/lib/systemd/system/mlos-core.service
}
