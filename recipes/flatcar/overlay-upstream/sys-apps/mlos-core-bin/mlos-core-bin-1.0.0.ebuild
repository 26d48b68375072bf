# Copyright 2025 MLOS Linux maintainers
# Distributed under the terms of the Apache License, Version 2.0

EAPI=8

DESCRIPTION="MLOS core runtime: the upstream release's prebuilt binaries"
HOMEPAGE="https://mlos.example/core"
# The same pinned archive the mlos-core .deb repackages (recipes/upstream.toml).
SRC_URI="https://downloads.mlos.example/mlos-core/${PV}/mlos-core-${PV}-linux-amd64.tar.gz"
S="${WORKDIR}/mlos-core-${PV}"

LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="-* ~amd64"
RESTRICT="strip"

RDEPEND="sys-apps/mlos-services"

QA_PREBUILT="usr/bin/*"

src_install() {
	dobin bin/*
	dodoc LICENSE
}
