"""The Ignition config of MLOS on Flatcar, from its human-edited YAML source, run as the
`ignition` stage:

    python3 /in/tools/ignition.py SOURCE.yaml SCHEMA.json OUT.ign [INPUTS]

SOURCE is a subset of Butane's `flatcar` 1.1.0 spec (the one that targets Ignition 3.4):
`variant`, `version`, then `ignition`, `passwd`, `storage`, `systemd` and `kernel_arguments`
with Butane's snake_case names for Ignition's fields (`ssh_authorized_keys` becomes
`sshAuthorizedKeys`). Two forms of a file's `contents` are translated:

- `inline: TEXT` becomes a `data:` URL;
- `artifact: STAGE/OUTPUT` (mlos-repro's own) names an output of a stage this stage takes
  as an input (INPUTS/STAGE/OUTPUT; INPUTS is /in): its sha256 becomes the file's `verification.hash`, so the
  hash is never typed by hand. `source` says where hosts download it from.

The config is refused, naming the JSON path, when a key is not one Ignition 3.4 knows, when
it does not match the schema, when a path is not absolute or is given twice, or when an
artifact is missing. Exit 2 for a bad source, 1 for anything else.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from archive import file_digest

SPEC = ("flatcar", "1.1.0")
IGNITION_VERSION = "3.4.0"
UNIT_SUFFIXES = (".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target",
                 ".path", ".timer", ".snapshot", ".slice", ".scope")


class Refused(Exception):
    """The source is wrong; the message names where."""


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML without silent surprises: a key given twice is an error, not the last one wins."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise Refused(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def where(path: list[str | int] | Any) -> str:
    """A JSON path: $.storage.files[0].mode."""
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def load(source: Path) -> dict[str, Any]:
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise Refused(f"not UTF-8 (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        raise Refused(str(err).replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise Refused("the document is not a mapping")
    spec = (data.pop("variant", None), data.pop("version", None))
    if spec != SPEC:
        raise Refused(f"variant/version are {spec[0]!r}/{spec[1]!r}; this translator reads variant: "
                      f"{SPEC[0]}, version: {SPEC[1]} (Butane's spec for Ignition {IGNITION_VERSION})")
    if "version" in (data.get("ignition") or {}):
        raise Refused(f"$.ignition.version: written by the translator ({IGNITION_VERSION}); remove it")
    return data


def camel(data: Any) -> Any:
    """Butane's snake_case field names as Ignition's camelCase ones (no Ignition field is a
    free-form map, so every mapping key is a field name)."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            head, *rest = str(key).split("_")
            out[head + "".join(word.capitalize() for word in rest)] = camel(value)
        return out
    if isinstance(data, list):
        return [camel(item) for item in data]
    return data


def contents(resource: Any, at: list[str | int], inputs: Path) -> Any:
    """A file's contents, Butane form to Ignition form."""
    if not isinstance(resource, dict):
        return resource  # the schema names it
    resource = dict(resource)
    if "inline" in resource:
        if "source" in resource:
            raise Refused(f"{where(at)}: give inline or source, not both")
        text = resource.pop("inline")
        if not isinstance(text, str):
            raise Refused(f"{where([*at, 'inline'])}: not text")
        resource["source"] = "data:," + urllib.parse.quote(text, safe="")
    if "artifact" in resource:
        name = resource.pop("artifact")
        if not isinstance(name, str) or posixpath.normpath(name) != name or name.startswith(("/", "..")) \
                or name.count("/") != 1:
            raise Refused(f"{where([*at, 'artifact'])}: {name!r} is not STAGE/OUTPUT")
        if "verification" in resource:
            raise Refused(f"{where([*at, 'verification'])}: an artifact's hash is computed from "
                          f"the artifact; remove verification")
        if not resource.get("source"):
            raise Refused(f"{where(at)}: an artifact needs a source (the URL hosts download it from)")
        built = inputs / name
        if not built.is_file() or built.is_symlink():
            stages = sorted(p.name for p in inputs.iterdir() if p.is_dir())
            raise Refused(f"{where([*at, 'artifact'])}: {name} is not an output of an input stage "
                          f"(this stage's inputs: {', '.join(stages)}); add the stage to the recipe's inputs")
        resource["verification"] = {"hash": "sha256-" + file_digest(built)}
    return resource


def translate(data: dict[str, Any], inputs: Path) -> dict[str, Any]:
    ignition = dict(data.get("ignition") or {})
    ignition["version"] = IGNITION_VERSION
    data = {**data, "ignition": ignition}
    storage = data.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("files"), list):
        files = []
        for i, entry in enumerate(storage["files"]):
            if isinstance(entry, dict) and "contents" in entry:
                entry = {**entry, "contents": contents(entry["contents"], ["storage", "files", i, "contents"],
                                                       inputs)}
            files.append(entry)
        data["storage"] = {**storage, "files": files}
    translated: dict[str, Any] = camel(data)
    return translated


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _known(schema: dict[str, Any], node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The properties an object may have (through $ref and allOf) and its items' schema."""
    node = _resolve(schema, node)
    properties = dict(node.get("properties", {}))
    items = node.get("items")
    for part in node.get("allOf", []):
        more, more_items = _known(schema, part)
        properties.update(more)
        items = items or more_items
    return properties, items


def unknown_keys(schema: dict[str, Any], node: dict[str, Any], data: Any, at: list[str | int]) -> list[str]:
    """Every key the schema does not know (Ignition's schema allows them; Ignition ignores
    them, so a misspelt key would silently do nothing)."""
    properties, items = _known(schema, node)
    found = []
    if isinstance(data, dict) and properties:
        for key, value in data.items():
            if key not in properties:
                found.append(f"{where([*at, key])}: Ignition {IGNITION_VERSION} has no such key")
            else:
                found += unknown_keys(schema, properties[key], value, [*at, key])
    elif isinstance(data, list) and items is not None:
        for i, value in enumerate(data):
            found += unknown_keys(schema, items, value, [*at, i])
    return found


def semantics(config: dict[str, Any]) -> list[str]:
    """What Ignition itself refuses beyond the schema: relative or repeated paths, unit names."""
    found = []
    seen: dict[str, str] = {}
    storage = config.get("storage") or {}
    for kind in ("files", "directories", "links"):
        for i, node in enumerate(storage.get(kind) or []):
            path = node.get("path")
            at = where(["storage", kind, i, "path"])
            if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
                found.append(f"{at}: {path!r} is not an absolute, normal path")
            elif path in seen:
                found.append(f"{at}: {path} is already given at {seen[path]}")
            else:
                seen[path] = at
    units: dict[str, str] = {}
    for i, unit in enumerate((config.get("systemd") or {}).get("units") or []):
        name, at = unit.get("name"), where(["systemd", "units", i, "name"])
        if not isinstance(name, str) or not name.endswith(UNIT_SUFFIXES) or "/" in name:
            found.append(f"{at}: {name!r} is not a systemd unit name")
        elif name in units:
            found.append(f"{at}: {name} is already given at {units[name]}")
        else:
            units[name] = at
    return found


def check(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    found = unknown_keys(schema, schema, config, [])
    validator = jsonschema.Draft4Validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        found.append(f"{where(list(error.absolute_path))}: {error.message}")
    if not found:
        found = semantics(config)
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: ignition.py SOURCE.yaml SCHEMA.json OUT.ign [INPUTS]", file=sys.stderr)
        return 2
    source, schema_file, out, inputs = map(Path, [*argv, "/in"][:4])
    os.umask(0o022)  # the modes of what it writes do not depend on the caller's umask
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    try:
        config = translate(load(source), inputs)
        problems = check(config, schema)
    except Refused as err:
        problems = [str(err)]
    if problems:
        for problem in problems:
            print(f"ignition.py: {source}: {problem}", file=sys.stderr)
        print(f"ignition.py: {len(problems)} problem(s); "
              f"the Ignition {IGNITION_VERSION} config is not written", file=sys.stderr)
        return 2
    out.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
