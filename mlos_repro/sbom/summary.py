"""Read an SBOM back: a summary for people (`mlos-repro sbom`) and the difference between two
(`mlos-repro sbom diff`): components added, removed and changed."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.digest import sha256_file
from mlos_repro.errors import BadInputError
from mlos_repro.sbom import validate
from mlos_repro.sbom.facts import SBOM_SUFFIX


def locate(given: Path) -> tuple[Path, Path | None]:
    """(the SBOM, the artifact it describes if at hand) for an artifact or an SBOM path."""
    if given.name.endswith(SBOM_SUFFIX):
        artifact = given.with_name(given.name.removesuffix(SBOM_SUFFIX))
        return given, artifact if artifact.is_file() else None
    path = given.with_name(given.name + SBOM_SUFFIX)
    if not path.is_file():
        raise BadInputError(f"{given}: no SBOM next to it (expected {path})",
                            "mlos-repro build writes OUT/<stage>/<output>.cdx.json beside each output")
    return path, given if given.is_file() else None


def check_artifact(info: dict[str, Any], artifact: Path | None) -> list[str]:
    """A problem if the artifact at hand is not the bytes the SBOM describes."""
    if artifact is None or info["sha256"] == (actual := sha256_file(artifact)):
        return []
    return [f"{artifact}: sha256 {actual}, but the SBOM describes {info['sha256']}"]


def load(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The SBOM at path and its problems (schema, purls, NTIA); exit 2 if it is not JSON."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BadInputError(f"{path}: not JSON ({e})", "is this a CycloneDX JSON SBOM (.cdx.json)?") from None
    if not isinstance(data, dict) or data.get("bomFormat") != "CycloneDX":
        raise BadInputError(f"{path}: not a CycloneDX document (bomFormat is not \"CycloneDX\")")
    return data, validate.problems(text)


def _properties(c: dict[str, Any]) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in c.get("properties") or []}


def _licenses(c: dict[str, Any]) -> list[str]:
    out = []
    for entry in c.get("licenses") or []:
        lic = entry.get("license") or {}
        out.append(lic.get("id") or lic.get("name") or entry.get("expression") or "?")
    return out


def summary(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    components = data.get("components") or []
    root = (data.get("metadata") or {}).get("component") or {}
    roles: Counter[str] = Counter()
    licenses: Counter[str] = Counter()
    unowned = []
    for c in components:
        props = _properties(c)
        roles[props.get("mlos:role") or props.get("mlos:origin") or c.get("type", "?")] += 1
        if props.get("mlos:unowned") == "true":
            unowned.append(c.get("name", ""))
        elif c.get("type") != "file":
            for name in _licenses(c) or ["(none found)"]:
                licenses[name] += 1
    return {
        "artifact": _properties(root).get("mlos:artifact") or root.get("name"),
        "name": root.get("name"), "version": root.get("version"),
        "sha256": validate.described(data),
        "timestamp": (data.get("metadata") or {}).get("timestamp"),
        "serialNumber": data.get("serialNumber"),
        "components": len(components),
        "by_kind": dict(sorted(roles.items())),
        "licenses": dict(licenses.most_common()),
        "unowned_files": sorted(unowned),
        "valid": not problems,
        "problems": problems,
    }


def _identity(c: dict[str, Any]) -> str:
    """What stays the same when a component changes version: its purl without the version, or
    for a file its path and where it was found."""
    purl = str(c.get("purl") or "")
    if purl:
        head, _, rest = purl.partition("@")
        _, _, qualifiers = rest.partition("?")
        return f"{head}?{qualifiers}" if qualifiers else head
    return f"{c.get('type')}:{_properties(c).get('mlos:found-in', '')}:{c.get('name')}"


@dataclass
class Change:
    identity: str
    name: str
    first: str | None  # version, None if added
    second: str | None  # version, None if removed
    what: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"component": self.name, "id": self.identity, "first": self.first, "second": self.second,
                "what": self.what}


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Change]]:
    def index(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {_identity(c): c for c in d.get("components") or []}

    first, second = index(a), index(b)
    added = [Change(k, second[k].get("name", ""), None, second[k].get("version"))
             for k in sorted(set(second) - set(first))]
    removed = [Change(k, first[k].get("name", ""), first[k].get("version"), None)
               for k in sorted(set(first) - set(second))]
    changed = []
    for k in sorted(set(first) & set(second)):
        ca, cb = first[k], second[k]
        what = [aspect for aspect, get in (("version", lambda c: c.get("version")),
                                           ("hashes", lambda c: c.get("hashes")),
                                           ("licenses", _licenses),
                                           ("supplier", lambda c: (c.get("supplier") or {}).get("name")))
                if get(ca) != get(cb)]
        if what:
            changed.append(Change(k, ca.get("name", ""), ca.get("version"), cb.get("version"), what))
    return {"added": added, "removed": removed, "changed": changed}
