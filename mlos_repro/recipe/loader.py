"""TOML recipes -> RecipeSet. Every problem is collected and reported with file and key."""

from __future__ import annotations

import graphlib
import posixpath
import re
import tomllib
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from mlos_repro.digest import is_sha256
from mlos_repro.errors import RecipeError
from mlos_repro.recipe.model import (
    DEFAULT_PROFILES,
    BuilderConfig,
    Environment,
    Input,
    InputKind,
    RecipeSet,
    Stage,
)

BUILDER_FILE = "builder.toml"
STAGE_KEYS = {"name", "builder", "inputs", "outputs", "run", "env", "description", "profiles", "profile",
              "privileged", "secureboot"}
PROFILE_KEYS = {"builder", "env", "inputs", "outputs", "run"}
# A url: input written before its archive could be downloaded: `mlos-repro pin URL` replaces it.
UNPINNED = "unpinned"
ENV_KEYS = {"suite", "architecture", "mirror", "components", "variant", "packages", "locales", "keyring"}
LOCALE_RE = re.compile(r"[a-z]{2,3}_[A-Z]{2}(@[a-z]+)?\.UTF-8")
RESERVED_ENV = {"PATH", "HOME", "SOURCE_DATE_EPOCH", "MLOS_STAGE", "TZ"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # always fullmatch: "$" would allow "\n"
UNSAFE_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEB_RE = re.compile(r"(?P<name>[a-z0-9][a-z0-9+.-]+)=(?P<version>[A-Za-z0-9.+~:-]+)")


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def load_recipes(recipes_dir: Path, profile: str | None = None) -> RecipeSet:
    """Load recipes_dir/builder.toml and every other recipes_dir/*.toml; raise RecipeError.

    Every profile is checked; the stages returned are those of `profile` (default: the first
    profile builder.toml names), with that profile's overrides applied.
    """
    recipes_dir = recipes_dir.absolute()
    if not recipes_dir.is_dir():
        raise RecipeError([f"{recipes_dir}: recipe directory does not exist"])
    root = recipes_dir.parent
    problems = _Problems()
    builder = _load_builder(recipes_dir / BUILDER_FILE, root, problems)
    profiles = builder.profiles if builder is not None else DEFAULT_PROFILES
    by_profile: dict[str, dict[str, Stage]] = {p: {} for p in profiles}
    for path in sorted(recipes_dir.glob("*.toml")):
        if path.name == BUILDER_FILE:
            continue
        for variants in _load_stage_file(path, root, profiles, problems):
            for prof, stage in variants.items():
                stages = by_profile[prof]
                if stage.name in stages:
                    problems.add(f"{_rel(path, root)}: stage {stage.name!r}.name",
                                 f"duplicate stage name in profile {prof!r}; first defined in "
                                 f"{stages[stage.name].source}")
                    continue
                stages[stage.name] = stage
    for prof, stages in by_profile.items():
        _check_references(prof, stages, by_profile, builder, problems)
    if not problems.items:
        for stages in by_profile.values():
            _check_cycles(stages, problems)
    if profile is None:
        profile = profiles[0]
    elif profile not in profiles:
        problems.add(f"{_rel(recipes_dir / BUILDER_FILE, root)}: profiles",
                     f"unknown profile {profile!r}; the recipes define {', '.join(profiles)}")
    for stage in by_profile.get(profile, {}).values():
        for inp in stage.inputs:
            if inp.kind is InputKind.URL and inp.sha256 is None:
                problems.add(f"{stage.source}: stage {stage.name!r}.inputs.{inp.name}",
                             f"{inp.target} is not pinned yet (profile {profile!r} builds this stage); "
                             f"run: mlos-repro pin {inp.target}")
    if problems.items:
        raise RecipeError(list(dict.fromkeys(problems.items)))
    assert builder is not None
    return RecipeSet(root=root, recipes_dir=recipes_dir, builder=builder,
                     stages=by_profile[profile], profile=profile)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_toml(path: Path, root: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problems.add(_rel(path, root), "file not found")
    except tomllib.TOMLDecodeError as e:
        problems.add(_rel(path, root), f"not valid TOML: {e}")
    except UnicodeDecodeError as e:
        problems.add(_rel(path, root), f"not UTF-8 (byte {e.start}): TOML files are UTF-8 text")
    return None


def _load_builder(path: Path, root: Path, problems: _Problems) -> BuilderConfig | None:
    data = _read_toml(path, root, problems)
    if data is None:
        return None
    where = _rel(path, root)
    for key in sorted(set(data) - {"source_date_epoch", "profiles", "environment"}):
        problems.add(f"{where}: {key}",
                     "unknown key (expected source_date_epoch, profiles, [environment.NAME])")
    profiles = data.get("profiles", list(DEFAULT_PROFILES))
    if (not isinstance(profiles, list) or not profiles
            or not all(isinstance(p, str) and NAME_RE.fullmatch(p) for p in profiles)
            or len(set(profiles)) != len(profiles)):
        problems.add(f"{where}: profiles", "must be a list of distinct names, the default first")
        profiles = list(DEFAULT_PROFILES)
    sde = data.get("source_date_epoch")
    if not isinstance(sde, int) or isinstance(sde, bool) or sde < 0:
        problems.add(f"{where}: source_date_epoch", "must be a non-negative integer (seconds since 1970)")
        sde = 0
    envs: dict[str, Environment] = {}
    tables = data.get("environment", {})
    if not isinstance(tables, dict) or not tables:
        problems.add(f"{where}: environment", "define at least [environment.default]")
        tables = {}
    for name, table in tables.items():
        key = f"{where}: environment.{name}"
        if not isinstance(table, dict):
            problems.add(key, "must be a table")
            continue
        for unknown in sorted(set(table) - ENV_KEYS):
            problems.add(f"{key}.{unknown}", f"unknown key (expected one of {', '.join(sorted(ENV_KEYS))})")
        values: dict[str, Any] = {}
        for field in ("suite", "architecture", "mirror"):
            v = table.get(field)
            if not isinstance(v, str) or not v:
                problems.add(f"{key}.{field}", "required, a non-empty string")
            values[field] = v if isinstance(v, str) else ""
        for field in ("components", "packages", "locales"):
            v = table.get(field, ["main"] if field == "components" else [])
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                problems.add(f"{key}.{field}", "must be a list of non-empty strings")
                v = []
            values[field] = tuple(v)
        for loc in values["locales"]:
            if not LOCALE_RE.fullmatch(loc):
                problems.add(f"{key}.locales", f"{loc!r} is not a UTF-8 locale name like et_EE.UTF-8")
        if values["locales"] and "locales" not in values["packages"]:
            problems.add(f"{key}.locales", "generating locales needs the package 'locales' in packages")
        keyring = table.get("keyring", "")
        if not isinstance(keyring, str) or (keyring and not keyring.startswith("/")):
            problems.add(f"{key}.keyring", "must be the absolute path of an archive keyring on the host, "
                                           "e.g. /usr/share/keyrings/ubuntu-archive-keyring.gpg")
            keyring = ""
        values["keyring"] = keyring
        variant = table.get("variant", "minbase")
        if variant not in ("essential", "minbase", "buildd", "apt", "required", "important", "standard"):
            problems.add(f"{key}.variant", f"unknown mmdebstrap variant {variant!r}")
        envs[name] = Environment(name=name, variant=str(variant), **values)
    return BuilderConfig(source_date_epoch=sde, environments=envs, path=path, profiles=tuple(profiles))


def _load_stage_file(path: Path, root: Path, profiles: tuple[str, ...],
                     problems: _Problems) -> list[dict[str, Stage]]:
    data = _read_toml(path, root, problems)
    if data is None:
        return []
    where = _rel(path, root)
    for key in sorted(set(data) - {"stage"}):
        problems.add(f"{where}: {key}", "unknown key (a recipe file holds [[stage]] tables only)")
    tables = data.get("stage", [])
    if not isinstance(tables, list):
        problems.add(f"{where}: stage", "must be an array of tables: write [[stage]]")
        return []
    stages = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.add(f"{where}: stage[{index}]", "must be a table")
            continue
        stage = _parse_stage(table, f"{where}: stage[{index}]", where, root, problems)
        if stage is not None:
            stages.append(_profile_variants(stage, table, root, profiles, problems))
    return stages


def _profile_variants(stage: Stage, table: dict[str, Any], root: Path, profiles: tuple[str, ...],
                      problems: _Problems) -> dict[str, Stage]:
    """The stage as each profile it belongs to sees it: [stage.profile.NAME] overrides merged."""
    key = f"{stage.source}: stage {stage.name!r}"
    members = table.get("profiles", list(profiles))
    if not isinstance(members, list) or not members or not all(isinstance(p, str) for p in members):
        problems.add(f"{key}.profiles", f"must be a non-empty list of profiles ({', '.join(profiles)})")
        return {}
    for unknown in [p for p in members if p not in profiles]:
        problems.add(f"{key}.profiles", f"unknown profile {unknown!r} (recipes/builder.toml defines "
                                        f"{', '.join(profiles)})")
    overrides = table.get("profile", {})
    if not isinstance(overrides, dict):
        problems.add(f"{key}.profile", "must be a table of [stage.profile.NAME] tables")
        overrides = {}
    variants = {}
    for prof in profiles:
        override = overrides.get(prof, {})
        where = f"{key}.profile.{prof}"
        if prof not in members:
            if prof in overrides:
                problems.add(where, f"the stage is not part of profile {prof!r} (see its profiles key)")
            continue
        if not isinstance(override, dict):
            problems.add(where, "must be a table")
            continue
        for unknown in sorted(set(override) - PROFILE_KEYS):
            problems.add(f"{where}.{unknown}",
                         f"unknown key (a profile may override {', '.join(sorted(PROFILE_KEYS))})")
        env = dict(stage.env)
        env.update(_parse_env(override.get("env", {}), f"{where}.env", problems))
        inputs = {i.name: i for i in stage.inputs}
        inputs.update((i.name, i) for i in _parse_inputs(override.get("inputs", {}), f"{where}.inputs",
                                                          root, problems))
        builder = override.get("builder", stage.builder)
        if not isinstance(builder, str) or not builder:
            problems.add(f"{where}.builder", "must name an environment of recipes/builder.toml")
            builder = stage.builder
        # What the profile's inputs give the stage more (or else) to make, and how.
        outputs = (_parse_outputs(override["outputs"], f"{where}.outputs", problems) if "outputs" in override
                   else stage.outputs)
        run = _parse_run(override["run"], f"{where}.run", problems) if "run" in override else stage.run
        for output, _ in stage.secureboot:
            if output not in outputs:
                problems.add(f"{where}.outputs", f"drops {output!r}, which the stage's secureboot table "
                                                 "names")
        variants[prof] = replace(stage, builder=builder, outputs=outputs, run=run,
                                 env=tuple(sorted(env.items())),
                                 inputs=tuple(inputs[n] for n in sorted(inputs)),
                                 profiles=tuple(p for p in profiles if p in members))
    for unknown in sorted(set(overrides) - set(profiles)):
        problems.add(f"{key}.profile.{unknown}", f"unknown profile (recipes/builder.toml defines "
                                                 f"{', '.join(profiles)})")
    return variants


def _parse_stage(table: dict[str, Any], key: str, where: str, root: Path,
                 problems: _Problems) -> Stage | None:
    before = len(problems.items)
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.add(f"{key}.name", "required: letters, digits, '.', '_' or '-'")
        name = f"#{key}"
    else:
        key = f"{where}: stage {name!r}"
    for unknown in sorted(set(table) - STAGE_KEYS):
        problems.add(f"{key}.{unknown}", f"unknown key (expected one of {', '.join(sorted(STAGE_KEYS))})")
    builder = table.get("builder", "default")
    if not isinstance(builder, str) or not builder:
        problems.add(f"{key}.builder", "must name an environment of recipes/builder.toml")
        builder = ""
    outputs = _parse_outputs(table.get("outputs"), f"{key}.outputs", problems)
    run = _parse_run(table.get("run"), f"{key}.run", problems)
    env = _parse_env(table.get("env", {}), f"{key}.env", problems)
    inputs = _parse_inputs(table.get("inputs", {}), f"{key}.inputs", root, problems)
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.add(f"{key}.description", "must be a string")
        description = ""
    privileged = table.get("privileged", False)
    if not isinstance(privileged, bool):
        problems.add(f"{key}.privileged", "must be true or false")
    signed = _parse_secureboot(table.get("secureboot", {}), outputs, f"{key}.secureboot", problems)
    if len(problems.items) != before:
        return None
    return Stage(name=name, builder=builder, outputs=outputs, run=run, inputs=inputs, env=env,
                 description=description, source=where, privileged=privileged, secureboot=signed)


def _parse_secureboot(value: Any, outputs: tuple[str, ...], key: str,
                      problems: _Problems) -> tuple[tuple[str, str], ...]:
    """{OUTPUT = "STAGE/OUTPUT.efi"}: images whose signed copy boots that signed EFI image."""
    if not isinstance(value, dict):
        problems.add(key, 'must be a table: { "IMAGE" = "STAGE/NAME.efi" }')
        return ()
    pairs = []
    for output, efi in sorted(value.items()):
        if output not in outputs:
            problems.add(f"{key}.{output}", f"not an output of this stage ({', '.join(outputs)})")
        stage, _, name = efi.partition("/") if isinstance(efi, str) else ("", "", "")
        if not (NAME_RE.fullmatch(stage) and NAME_RE.fullmatch(name) and name.endswith(".efi")):
            problems.add(f"{key}.{output}", f"{efi!r}: must name another stage's EFI image output, "
                                            'as "STAGE/NAME.efi"')
            continue
        pairs.append((output, efi))
    return tuple(pairs)


def _parse_outputs(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        problems.add(key, "required: a non-empty list of paths under /out")
        return ()
    seen: set[str] = set()
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            problems.add(f"{key}[{i}]", "must be a non-empty path string")
            continue
        if UNSAFE_PATH_CHARS.search(item):
            problems.add(f"{key}[{i}]", f"{item!r} holds a control character or backslash; output "
                                        "names are listed one per line in signed files")
            continue
        norm = posixpath.normpath(item)
        if PurePosixPath(item).is_absolute() or norm == "." or norm.split("/")[0] == "..":
            problems.add(f"{key}[{i}]", f"{item!r} escapes /out; give a relative path inside /out")
            continue
        if norm in seen:
            problems.add(f"{key}[{i}]", f"{item!r} is declared twice")
        seen.add(norm)
        out.append(norm)
    for a in out:
        for b in out:
            if b.startswith(a + "/"):
                problems.add(key, f"{b!r} lies inside the output {a!r}; declare one of them")
    return tuple(out)


def _parse_run(value: Any, key: str, problems: _Problems) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not value:
        problems.add(key, "required: a non-empty list of argv lists, e.g. [[\"make\", \"all\"]]")
        return ()
    commands = []
    for i, argv in enumerate(value):
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            problems.add(f"{key}[{i}]", "must be a non-empty list of strings (an argv; no shell)")
            continue
        if not argv[0]:
            problems.add(f"{key}[{i}]", "the program name is empty")
            continue
        if any("\0" in a for a in argv):
            problems.add(f"{key}[{i}]", "an argument holds a NUL character, which no argument can")
            continue
        commands.append(tuple(argv))
    return tuple(commands)


def _parse_env(value: Any, key: str, problems: _Problems) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        problems.add(key, "must be a table of NAME = \"value\"")
        return ()
    items = []
    for name, v in sorted(value.items()):
        if not ENV_NAME_RE.fullmatch(name):
            problems.add(f"{key}.{name}", "not a valid environment variable name")
        elif name in RESERVED_ENV:
            problems.add(f"{key}.{name}", "is fixed by the sandbox and cannot be set by a recipe")
        elif not isinstance(v, str):
            problems.add(f"{key}.{name}", "value must be a string")
        elif "\0" in v:
            problems.add(f"{key}.{name}", "the value holds a NUL character, which no environment "
                                          "variable can")
        else:
            items.append((name, v))
    return tuple(items)


def _parse_inputs(value: Any, key: str, root: Path, problems: _Problems) -> tuple[Input, ...]:
    if not isinstance(value, dict):
        problems.add(key, "must be a table of NAME = \"kind:...\"")
        return ()
    inputs = []
    for name, spec in sorted(value.items()):
        where = f"{key}.{name}"
        if not NAME_RE.fullmatch(name):
            problems.add(where, "input names are letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(spec, str):
            problems.add(where, "must be a string such as \"stage:NAME\"")
            continue
        parsed = parse_input(name, spec, where, root, problems)
        if parsed is not None:
            inputs.append(parsed)
    return tuple(inputs)


def parse_input(name: str, spec: str, where: str, root: Path, problems: _Problems) -> Input | None:
    kind_text, sep, rest = spec.partition(":")
    if not sep or kind_text not in {k.value for k in InputKind}:
        problems.add(where, f"{spec!r}: unknown input kind; use path:, stage:, env:, "
                            "url:…#sha256= or deb:NAME=VERSION#sha256=")
        return None
    kind = InputKind(kind_text)
    if kind is InputKind.PATH:
        rel = PurePosixPath(rest)
        norm = posixpath.normpath(rest) if rest else ""
        if not rest or rel.is_absolute() or norm.split("/")[0] == "..":
            problems.add(where, f"{spec!r}: a path: input is relative to the repository root "
                                "and stays inside it")
            return None
        if not (root / norm).exists():
            problems.add(where, f"{spec!r}: {root / norm} does not exist")
            return None
        return Input(name=name, kind=kind, spec=spec, target=norm)
    if kind is InputKind.STAGE or kind is InputKind.ENV:
        target, sep, output = rest.partition("/") if kind is InputKind.STAGE else (rest, "", "")
        bad_output = sep and (not output or posixpath.normpath(output) != output or output.startswith("/")
                              or ".." in output.split("/"))
        if not NAME_RE.fullmatch(target) or bad_output:
            what = "a stage, e.g. stage:kernel, or one of its outputs, e.g. stage:kernel/bzImage" \
                if kind is InputKind.STAGE else "an environment of recipes/builder.toml, e.g. env:target"
            problems.add(where, f"{spec!r}: name {what}")
            return None
        return Input(name=name, kind=kind, spec=spec, target=target, output=output or None)
    body, sep, frag = rest.partition("#sha256=")
    if not sep:
        problems.add(where, f"{spec!r}: a {kind}: input must be pinned with #sha256=<64 hex digits>")
        return None
    if frag == UNPINNED and kind is InputKind.URL:
        # Allowed in a recipe, refused when its stage is built (see load_recipes).
        return Input(name=name, kind=kind, spec=spec, target=body, sha256=None)
    if not is_sha256(frag):
        problems.add(where, f"{spec!r}: malformed sha256 {frag!r} (need 64 lowercase hex digits)")
        return None
    if kind is InputKind.URL:
        if not re.fullmatch(r"(https?|ftp)://[^/\s]+/\S*", body):
            problems.add(where, f"{spec!r}: not an http(s) URL")
            return None
        return Input(name=name, kind=kind, spec=spec, target=body, sha256=frag)
    m = DEB_RE.fullmatch(body)
    if not m:
        problems.add(where, f"{spec!r}: expected deb:NAME=VERSION#sha256=HEX")
        return None
    return Input(name=name, kind=kind, spec=spec, target=m["name"], version=m["version"], sha256=frag)


def _check_references(profile: str, stages: dict[str, Stage], by_profile: dict[str, dict[str, Stage]],
                      builder: BuilderConfig | None, problems: _Problems) -> None:
    for stage in stages.values():
        if builder is not None and stage.builder not in builder.environments:
            problems.add(f"{stage.source}: stage {stage.name!r}.builder",
                         f"unknown environment {stage.builder!r} (recipes/builder.toml defines "
                         f"{', '.join(sorted(builder.environments)) or 'none'})")
        for output, efi in stage.secureboot:
            other, _, name = efi.partition("/")
            if other in stages and name not in stages[other].outputs:
                problems.add(f"{stage.source}: stage {stage.name!r}.secureboot.{output}",
                             f"stage {other!r} has no output {name!r} ({', '.join(stages[other].outputs)})")
            elif other not in stages and not any(other in s for s in by_profile.values()):
                problems.add(f"{stage.source}: stage {stage.name!r}.secureboot.{output}",
                             f"unknown stage {other!r}")
        for inp in stage.inputs:
            if builder is not None and inp.kind is InputKind.ENV and inp.target not in builder.environments:
                problems.add(f"{stage.source}: stage {stage.name!r}.inputs.{inp.name}",
                             f"unknown environment {inp.target!r} (recipes/builder.toml defines "
                             f"{', '.join(sorted(builder.environments)) or 'none'})")
            if inp.kind is not InputKind.STAGE:
                continue
            if inp.target in stages:
                if inp.output is not None and inp.output not in stages[inp.target].outputs:
                    problems.add(f"{stage.source}: stage {stage.name!r}.inputs.{inp.name}",
                                 f"stage {inp.target!r} has no output {inp.output!r} in profile {profile!r} "
                                 f"({', '.join(stages[inp.target].outputs)})")
                continue
            elsewhere = [p for p, s in by_profile.items() if inp.target in s]
            problems.add(f"{stage.source}: stage {stage.name!r}.inputs.{inp.name}",
                         f"stage {inp.target!r} is not part of profile {profile!r} (only of "
                         f"{', '.join(elsewhere)}); add {profile!r} to that stage's profiles or "
                         f"restrict this one's" if elsewhere else f"unknown stage {inp.target!r}")


def _check_cycles(stages: dict[str, Stage], problems: _Problems) -> None:
    sorter = graphlib.TopologicalSorter({s.name: s.upstream for s in stages.values()})
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        cycle: list[str] = e.args[1]
        first = stages[cycle[0]]
        problems.add(f"{first.source}: stage {first.name!r}.inputs",
                     f"dependency cycle: {' -> '.join(cycle)}")
