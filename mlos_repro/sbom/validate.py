"""Check an SBOM: CycloneDX 1.6 JSON schema (the library's strict validator), package URLs,
and the NTIA minimum elements (supplier, name, version, unique id, dependency relationship,
author, timestamp). Each problem names the component and what is wrong with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from packageurl import PackageURL

from mlos_repro.sbom.facts import described
from mlos_repro.sbom.policy import NTIA_ELEMENTS

__all__ = ["described", "problems"]


def problems(text: str | bytes, required: tuple[str, ...] = NTIA_ELEMENTS) -> list[str]:
    """Everything wrong with the SBOM `text`; empty when it is valid."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError as e:
        return [f"not JSON: {e}"]
    if not isinstance(data, dict):
        return ["not a CycloneDX document: the top level is not an object"]
    out = []
    # Imported here: jsonschema's format checkers take seconds to load, and a build whose
    # SBOMs are all in the store never validates one.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        out.append(f"CycloneDX 1.6 schema: {_schema_message(error.data)}")
    metadata: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
    if "author" in required and not metadata.get("authors"):
        out.append("metadata: no author of the SBOM data (metadata.authors) (NTIA: author)")
    if "timestamp" in required and not metadata.get("timestamp"):
        out.append("metadata: no timestamp (NTIA: timestamp)")
    related = _related(data)
    for where, component in _components(data):
        out.extend(_component(where, component, related, required))
    return out


def _schema_message(error: Any) -> str:
    path = getattr(error, "absolute_path", None) or getattr(error, "path", None)
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (path or [])).lstrip(".")
    message = getattr(error, "message", None) or str(error)
    return f"{where or '(document)'}: {message}"


def _components(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("component"), dict):
        yield "metadata.component", metadata["component"]

    def walk(items: Any, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for i, c in enumerate(items if isinstance(items, list) else []):
            if isinstance(c, dict):
                yield f"{prefix}[{i}]", c
                yield from walk(c.get("components"), f"{prefix}[{i}].components")

    yield from walk(data.get("components"), "components")


def _related(data: dict[str, Any]) -> set[str]:
    refs: set[str] = set()
    for d in data.get("dependencies") or []:
        if isinstance(d, dict):
            refs.add(str(d.get("ref")))
            refs.update(str(x) for x in d.get("dependsOn") or [])
    return refs


def _component(where: str, c: dict[str, Any], related: set[str], required: tuple[str, ...]) -> list[str]:
    label = f"{where} ({c.get('bom-ref') or c.get('name') or 'unnamed'})"
    out = []
    supplier = c.get("supplier")
    if "supplier" in required and not (isinstance(supplier, dict) and supplier.get("name")):
        out.append(f"{label}: missing supplier (NTIA: supplier name)")
    if "name" in required and not c.get("name"):
        out.append(f"{label}: missing name (NTIA: component name)")
    if "version" in required and not c.get("version"):
        out.append(f"{label}: missing version (NTIA: version of the component)")
    if "unique-id" in required and not (c.get("purl") or c.get("cpe") or c.get("swid") or c.get("hashes")):
        out.append(f"{label}: no unique identifier: purl, cpe, swid or hash (NTIA: other unique identifiers)")
    if "dependencies" in required and c.get("bom-ref") not in related:
        out.append(f"{label}: not in the dependency graph (NTIA: dependency relationship)")
    purl = c.get("purl")
    if purl is not None:
        try:
            parsed = PackageURL.from_string(str(purl))
        except ValueError as e:
            out.append(f"{label}: purl {purl!r} is not a package URL: {e}")
        else:
            if parsed.name != c.get("name"):
                out.append(f"{label}: purl {purl!r} names {parsed.name!r}, the component {c.get('name')!r}")
            if parsed.version != c.get("version"):
                out.append(f"{label}: purl {purl!r} has version {parsed.version!r}, "
                           f"the component {c.get('version')!r}")
    return out
