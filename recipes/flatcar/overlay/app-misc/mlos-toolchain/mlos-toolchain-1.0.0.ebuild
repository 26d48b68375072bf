# Copyright 2025 MLOS Linux maintainers
# Distributed under the terms of the Apache License, Version 2.0

EAPI=8

DESCRIPTION="MLOS Linux machine-learning toolchain (metapackage)"
HOMEPAGE="https://mlos.example/"

LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="~amd64"

RDEPEND="
	dev-lang/python:3
	dev-python/numpy
"
