"""The SBOM policy (sbom/policy.toml, sbom/licenses.toml): what a catalogue cannot see.

Suppliers of the artifact, of each distribution's packages and of MLOS components; licences of
MLOS components; the NTIA minimum elements each SBOM must carry; Debian licence short names
mapped to SPDX identifiers. Recipes whose repository has neither file get the built-in ones
beside this module (default-policy.toml, licenses.toml).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlos_repro.errors import BadInputError

POLICY_FILE = Path("sbom/policy.toml")
LICENSES_FILE = Path("sbom/licenses.toml")
BUILT_IN = Path(__file__).resolve().parent
DEFAULT_POLICY = BUILT_IN / "default-policy.toml"
DEFAULT_LICENSES = BUILT_IN / "licenses.toml"
BUILT_IN_SOURCE = "built-in default"
NTIA_ELEMENTS = ("supplier", "name", "version", "unique-id", "dependencies", "author", "timestamp")


@dataclass(frozen=True, slots=True)
class Supplier:
    name: str
    url: str = ""


@dataclass(frozen=True, slots=True)
class ComponentRule:
    match: tuple[str, ...]
    namespace: str
    supplier: Supplier
    licenses: tuple[str, ...]

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.match)


@dataclass(frozen=True, slots=True)
class Policy:
    author: str
    required: tuple[str, ...]
    artifact: Supplier
    distros: dict[str, Supplier]
    components: tuple[ComponentRule, ...]
    spdx: dict[str, str]
    digest: str  # of both files: part of an SBOM's cache key
    source: str = ""  # the policy file used, or "built-in default"

    @property
    def built_in(self) -> bool:
        return self.source == BUILT_IN_SOURCE

    def rule(self, name: str) -> ComponentRule | None:
        return next((r for r in self.components if r.matches(name)), None)

    def spdx_name(self, debian: str) -> str:
        """A Debian licence short name as SPDX (an id where there is one, else the name)."""
        name = debian.strip()
        if name in self.spdx:
            return self.spdx[name]
        m = re.fullmatch(r"(A?GPL|LGPL|GFDL)-?(\d(?:\.\d)?)(\+?)", name, re.IGNORECASE)
        if m:
            family, version, later = m.group(1).upper(), m.group(2), m.group(3)
            if "." not in version:
                version += ".0"
            return f"{family}-{version}-{'or-later' if later else 'only'}"
        return name


def load_policy(root: Path) -> Policy:
    """The policy of the repository at root (sbom/policy.toml and sbom/licenses.toml; the
    built-in ones where it has none)."""
    path = root / POLICY_FILE
    if not path.exists():
        path = DEFAULT_POLICY
    licenses_path = root / LICENSES_FILE if (root / LICENSES_FILE).exists() else DEFAULT_LICENSES
    data = _read(path)
    licenses = _read(licenses_path)
    digest = hashlib.sha256()
    for p in (path, licenses_path):
        digest.update(p.read_bytes())

    def where(key: str) -> str:
        return f"{POLICY_FILE}: {key}"

    def text(table: dict[str, Any], key: str, what: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise BadInputError(f"{where(what)}: expected a non-empty string", f"see {POLICY_FILE}")
        return value

    def supplier(table: Any, what: str) -> Supplier:
        if not isinstance(table, dict):
            raise BadInputError(f"{where(what)}: expected a table with supplier (and url)")
        return Supplier(text(table, "supplier", f"{what}.supplier"), str(table.get("url", "")))

    document = data.get("document", {})
    required = tuple(document.get("required", NTIA_ELEMENTS))
    unknown = sorted(set(required) - set(NTIA_ELEMENTS))
    if unknown:
        raise BadInputError(f"{where('document.required')}: unknown element(s) {', '.join(unknown)}",
                            f"known: {', '.join(NTIA_ELEMENTS)}")
    rules = []
    for i, table in enumerate(data.get("component", [])):
        what = f"component[{i}]"
        match = table.get("match")
        if not isinstance(match, list) or not match or not all(isinstance(m, str) for m in match):
            raise BadInputError(f"{where(what + '.match')}: expected a list of name patterns")
        rules.append(ComponentRule(tuple(match), text(table, "namespace", f"{what}.namespace"),
                                   supplier(table, what), tuple(table.get("licenses", ()))))
    return Policy(
        author=text(document, "author", "document.author"),
        required=required,
        artifact=supplier(data.get("artifact"), "artifact"),
        distros={name: supplier(t, f"distro.{name}") for name, t in data.get("distro", {}).items()},
        components=tuple(rules),
        spdx={str(k): str(v) for k, v in licenses.get("spdx", {}).items()},
        digest=digest.hexdigest(),
        source=BUILT_IN_SOURCE if path == DEFAULT_POLICY else str(path),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{path}: not valid TOML: {e}") from None
