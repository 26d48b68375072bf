# Copyright 2025 MLOS Linux maintainers
# Distributed under the terms of the Apache License, Version 2.0

EAPI=8

DESCRIPTION="MLOS Linux host services for machine-learning workloads"
HOMEPAGE="https://mlos.example/"
SRC_URI="https://downloads.mlos.example/sources/${P}.tar.gz"

LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="~amd64"

RDEPEND="
	dev-lang/python:3
	sys-apps/systemd
	~sys-apps/mlos-core-${PV}
"

src_install() {
	exeinto /usr/libexec/mlos
	doexe files/usr/libexec/mlos/mlos-api
	dobin files/usr/bin/mlos-monitor
	insinto /usr/lib/systemd/system
	doins files/lib/systemd/system/mlos-{api,monitor}.service
	insinto /usr/lib/tmpfiles.d
	doins files/usr/lib/tmpfiles.d/mlos.conf
	insinto /usr/lib/sysctl.d
	doins files/usr/lib/sysctl.d/60-mlos.conf
	insinto /etc/mlos
	doins files/etc/mlos/mlos.conf
	doman files/usr/share/man/man1/mlos-monitor.1
}
