# Copyright 2025 MLOS Linux maintainers
# Distributed under the terms of the Apache License, Version 2.0

EAPI=8

DESCRIPTION="Axon distributed-training transport: the upstream release's prebuilt binaries"
HOMEPAGE="https://mlos.example/axon"
# The same pinned archive the axon .deb repackages (recipes/upstream.toml).
SRC_URI="https://downloads.mlos.example/axon/${PV}/axon-${PV}-linux-amd64.tar.gz"
S="${WORKDIR}/axon-${PV}"

LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="-* ~amd64"
RESTRICT="strip"

QA_PREBUILT="usr/bin/*"

src_install() {
	dobin bin/*
	dodoc LICENSE
}
