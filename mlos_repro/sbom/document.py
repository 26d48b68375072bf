"""CycloneDX 1.6 SBOMs from catalogues, with cyclonedx-python-lib; deterministic bytes.

The artifact is the metadata component (its sha256 names the exact bytes described). Every
package becomes a component with a purl (pkg:deb/NAMESPACE/NAME@VERSION?arch=…&distro=…),
supplier, licences (SPDX ids where the Debian copyright file is machine-readable, else the
policy's) and, for a .deb file, its sha256; Depends/Pre-Depends become the dependency graph.
The kernel carries its Debian source as pedigree and each MLOS patch, with its sha256, as a
nested component. Files no package owns are components of type file, flagged mlos:unowned.

Deterministic: the timestamp is SOURCE_DATE_EPOCH, the serial number a uuid5 of the content,
and the library sorts components, properties and dependencies.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import uuid
from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import (
    Component,
    ComponentType,
    Diff,
    Patch,
    PatchClassification,
    Pedigree,
)
from cyclonedx.model.contact import OrganizationalContact, OrganizationalEntity
from cyclonedx.model.dependency import Dependency
from cyclonedx.model.license import DisjunctiveLicense
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.spdx import fixup_id
from debian.copyright import Copyright
from debian.copyright import Error as CopyrightError
from debian.deb822 import PkgRelation
from packageurl import PackageURL

from mlos_repro import __version__
from mlos_repro.digest import canonical_json
from mlos_repro.sbom.catalogue import Catalogue, File, Package, join
from mlos_repro.sbom.policy import Policy, Supplier

logging.getLogger("debian.copyright").setLevel(logging.ERROR)  # "Fixing Format URL", per file

SERIAL_NAMESPACE = uuid.UUID("6f1c3d2e-9a57-4c1e-8a0b-6d4c2b1e7f30")
PROP = "mlos:"


def make(cat: Catalogue, *, name: str, sha256: str, tree: bool, policy: Policy, sde: int,
         kernels: Iterable[dict[str, Any]] = ()) -> bytes:
    """The SBOM of artifact `name` (sha256 of its bytes, or of its tree listing if tree)."""
    bom = Bom()
    bom.metadata.timestamp = datetime.datetime.fromtimestamp(sde, tz=datetime.UTC)
    bom.metadata.authors.add(OrganizationalContact(name=policy.author))
    bom.metadata.supplier = _entity(policy.artifact, url=True)
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="mlos-repro",
                                                version=__version__, bom_ref="tool:mlos-repro"))
    has_os = any(p.installed for p in cat.packages)
    root = Component(
        name=cat.product.get("name") or name, version=cat.product.get("version") or f"sha256:{sha256}",
        type=ComponentType.OPERATING_SYSTEM if has_os else ComponentType.DATA if tree else ComponentType.FILE,
        bom_ref=f"artifact:{name}", supplier=_entity(policy.artifact),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)],
        properties=[Property(name=PROP + "artifact", value=name)]
        + ([Property(name=PROP + "digest", value="tree listing (mlos-repro store)")] if tree else []))
    bom.metadata.component = root
    kernel_docs = {k.get("release"): k for k in kernels if isinstance(k, dict)}

    refs = _refs(cat)
    components: list[Component] = []
    by_ref: dict[str, Component] = {}
    for package, ref in zip(cat.packages, refs["packages"], strict=True):
        component = _package(package, ref, policy, kernel_docs)
        components.append(component)
        by_ref[ref] = component
    for file, ref in zip(cat.files, refs["files"], strict=True):
        component = _file(file, ref, policy, kernel_docs)
        components.append(component)
        by_ref[ref] = component
    for component in components:
        bom.components.add(component)
    # The graph, built directly: Bom.register_dependency searches it linearly on every call.
    scopes = _scopes(cat, refs)
    depends = {ref: _depends(package, scopes)
               for package, ref in zip(cat.packages, refs["packages"], strict=True)}
    graph = [Dependency(ref=root.bom_ref, dependencies=[Dependency(ref=c.bom_ref) for c in components])]
    for component in components:
        graph.append(Dependency(ref=component.bom_ref, dependencies=[
            Dependency(ref=by_ref[r].bom_ref) for r in depends.get(str(component.bom_ref), [])]))
        graph.extend(Dependency(ref=nested.bom_ref) for nested in component.components)
    bom.dependencies.update(graph)
    # The serial number names this content: a digest of everything the document is made from.
    content = canonical_json({"artifact": [name, sha256, tree], "catalogue": cat.to_json(),
                              "policy": policy.digest, "sde": sde, "kernels": list(kernel_docs.values()),
                              "tool": __version__, "library": version("cyclonedx-python-lib")})
    bom.serial_number = uuid.uuid5(SERIAL_NAMESPACE, hashlib.sha256(content).hexdigest())
    return (JsonV1Dot6(bom).output_as_string(indent=1) + "\n").encode()


def _entity(supplier: Supplier, url: bool = False) -> OrganizationalEntity:
    """A supplier; its URL only where asked (the document's): the schema's IRI check costs ~30 ms each."""
    urls = [XsUri(supplier.url)] if url and supplier.url else None
    return OrganizationalEntity(name=supplier.name, urls=urls)


def _purl(package: Package, namespace: str) -> PackageURL:
    qualifiers = {"arch": package.arch}
    if package.distro and namespace == package.distro_id:
        qualifiers["distro"] = package.distro
    return PackageURL(type="deb", namespace=namespace, name=package.name, version=package.version,
                      qualifiers=qualifiers)


def _namespace(package: Package, policy: Policy) -> tuple[str, Supplier | None, tuple[str, ...]]:
    rule = policy.rule(package.name)
    if rule is not None:
        return rule.namespace, rule.supplier, rule.licenses
    namespace = package.distro_id or "debian"
    return namespace, policy.distros.get(namespace), ()


def _refs(cat: Catalogue) -> dict[str, list[str]]:
    """A unique bom-ref per component: the purl-like identity, plus where it was found if needed."""
    def key(p: Package) -> str:
        return f"pkg:deb/{p.name}@{p.version}?arch={p.arch}"
    seen: dict[str, int] = {}
    for p in cat.packages:
        seen[key(p)] = seen.get(key(p), 0) + 1
    packages = [key(p) if seen[key(p)] == 1 else f"{key(p)}#{join(p.where, p.path)}" for p in cat.packages]
    files = [f"file:{join(f.where, f.path)}" for f in cat.files]
    return {"packages": packages, "files": files}


def _package(package: Package, ref: str, policy: Policy, kernels: dict[Any, dict[str, Any]]) -> Component:
    namespace, supplier, fallback = _namespace(package, policy)
    properties = [Property(name=PROP + "origin", value="installed" if package.installed else "deb")]
    if package.where:
        properties.append(Property(name=PROP + "found-in", value=package.where))
    if package.path:
        properties.append(Property(name=PROP + "path", value=package.path))
    if package.source and (package.source, package.source_version) != (package.name, package.version):
        properties.append(Property(name=PROP + "source", value=f"{package.source} {package.source_version}"))
    licenses = _licenses(package.copyright, policy) or [_license(x, policy) for x in fallback]
    pedigree = None
    if package.upstream:
        pedigree = Pedigree(ancestors=[_upstream(package.upstream)])
    elif (release := _kernel_release_of(package.name)) and release in kernels:
        pedigree = _kernel_pedigree(kernels[release])
    return Component(
        type=ComponentType.LIBRARY, name=package.name, version=package.version, bom_ref=ref,
        purl=_purl(package, namespace), supplier=_entity(supplier) if supplier else None,
        publisher=package.maintainer or None, licenses=licenses, properties=properties, pedigree=pedigree,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=package.sha256)] if package.sha256 else None)


def _kernel_release_of(name: str) -> str:
    m = re.fullmatch(r"linux-image-(.+?)(-dbg)?", name)
    return m.group(1) if m else ""


def _file(file: File, ref: str, policy: Policy, kernels: dict[Any, dict[str, Any]]) -> Component:
    properties = [Property(name=PROP + "role", value=file.role)]
    if file.where:
        properties.append(Property(name=PROP + "found-in", value=file.where))
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=file.sha256)] if file.sha256 else None
    if file.role == "kernel":
        rule = policy.rule("linux")
        supplier = rule.supplier if rule else policy.artifact
        doc = kernels.get(file.release)
        properties.append(Property(name=PROP + "path", value=file.path))
        return Component(
            type=ComponentType.OPERATING_SYSTEM, name="linux", version=file.release, bom_ref=ref,
            purl=PackageURL(type="generic", namespace=rule.namespace if rule else None, name="linux",
                            version=file.release),
            supplier=_entity(supplier), hashes=hashes, properties=properties,
            licenses=[_license(x, policy) for x in (rule.licenses if rule else ())],
            pedigree=_kernel_pedigree(doc) if doc else None,
            components=[Component(type=ComponentType.FILE, name=p["name"], version=file.release,
                                  bom_ref=f"{ref}#patch/{p['name']}", supplier=_entity(supplier),
                                  hashes=[HashType(alg=HashAlgorithm.SHA_256, content=p["sha256"])],
                                  properties=[Property(name=PROP + "role", value="patch")])
                        for p in (doc or {}).get("patches", [])])
    if file.type == "symlink":
        properties.append(Property(name=PROP + "target", value=file.target))
    if file.role == "unowned":
        properties.append(Property(name=PROP + "unowned", value="true"))
    if file.package:
        properties.append(Property(name=PROP + "package", value=file.package))
    version = f"sha256:{file.sha256}" if file.sha256 else f"symlink:{file.target}"
    return Component(type=ComponentType.FILE, name=file.path, version=version, bom_ref=ref,
                     supplier=_entity(policy.artifact), hashes=hashes, properties=properties)


def _kernel_pedigree(doc: dict[str, Any]) -> Pedigree:
    source = doc.get("source") or {}
    ancestors = []
    if source.get("version"):
        ancestors.append(Component(
            type=ComponentType.LIBRARY, name=source.get("source") or "linux", version=source["version"],
            purl=PackageURL(type="deb", namespace="debian", name=source.get("source") or "linux",
                            version=source["version"], qualifiers={"arch": "source"}),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=source["sha256"])] if source.get("sha256")
            else None,
            properties=[Property(name=PROP + "package", value=source.get("package", ""))]))
    patches = [Patch(type=PatchClassification.UNOFFICIAL, diff=Diff(url=XsUri(f"kernel/patches/{p['name']}")))
               for p in doc.get("patches", []) if p.get("name")]
    return Pedigree(ancestors=ancestors or None, patches=patches or None)


def _upstream(doc: dict[str, Any]) -> Component:
    url = str(doc.get("url", ""))
    return Component(
        type=ComponentType.APPLICATION,
        name=str(doc.get("archive") or doc.get("name") or url.rsplit("/", 1)[-1] or "upstream"),
        version=str(doc.get("version", "")) or None,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=doc["sha256"])] if doc.get("sha256") else None,
        external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url))]
        if url else None)


def _license(name: str, policy: Policy) -> DisjunctiveLicense:
    spdx = policy.spdx_name(name)
    fixed = fixup_id(spdx)
    return DisjunctiveLicense(id=fixed) if fixed else DisjunctiveLicense(name=spdx)


_SPLIT = re.compile(r"\s+or\s+|\s+and\s+|\s*,\s*|\s*\|\s*", re.IGNORECASE)


def _licenses(text: str | None, policy: Policy) -> list[DisjunctiveLicense]:
    """The licences a machine-readable (DEP-5) copyright file names; none for free-form text."""
    if not text or not text.lstrip().startswith("Format:"):
        return []
    try:
        parsed = Copyright(text.splitlines(), strict=False)
    except (CopyrightError, ValueError):
        return []
    names: set[str] = set()
    licenses_: list[Any] = [p.license for p in parsed.all_files_paragraphs()]
    licenses_.append(parsed.header.license)
    synopses = [str(x.synopsis) for x in licenses_ if x is not None]
    for synopsis in synopses:
        names.update(n.strip() for n in _SPLIT.split(synopsis or "") if n.strip())
    licenses: dict[str, DisjunctiveLicense] = {}
    for n in sorted(names):
        lic = _license(n, policy)
        licenses[lic.id or lic.name or n] = lic
    return [licenses[k] for k in sorted(licenses)]


Scopes = dict[tuple[str, bool], tuple[dict[str, str], dict[str, str]]]


def _scopes(cat: Catalogue, refs: dict[str, list[str]]) -> Scopes:
    """Per root filesystem (or the artifact's .debs): package names and provided virtual names."""
    scopes: Scopes = {}
    for p, r in zip(cat.packages, refs["packages"], strict=True):
        by_name, provided = scopes.setdefault((p.where, p.installed), ({}, {}))
        by_name.setdefault(p.name, r)
        for group in _relations(p.provides):
            for alt in group:
                provided.setdefault(alt["name"], r)
    return scopes


def _relations(text: str) -> list[list[dict[str, Any]]]:
    if not text.strip():
        return []
    parsed: list[list[dict[str, Any]]] = PkgRelation.parse_relations(text)  # type: ignore[assignment]
    return parsed


def _depends(package: Package, scopes: Scopes) -> list[str]:
    """Depends and Pre-Depends resolved within the same root filesystem (or the same artifact's
    .debs): the first alternative present, directly or as a provided virtual package."""
    by_name, provided = scopes[(package.where, package.installed)]
    out: set[str] = set()
    for field_ in (package.pre_depends, package.depends):
        for group in _relations(field_):
            for alt in group:
                ref = by_name.get(alt["name"]) or provided.get(alt["name"])
                if ref is not None:
                    out.add(ref)
                    break
    return sorted(out)
