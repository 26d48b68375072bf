"""Fuzzing with hypothesis, for a bounded number of examples: the metadata parsers a verifier
runs on untrusted bytes, and the pure-Python archive readers. Whatever the bytes, the answer is
a value or the parser's own named error, never another exception (which the command line
would turn into exit 70), and never a hang (hypothesis' deadline)."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlos_repro.attest.release_meta import FORMAT, MetaError, ReleaseInfo, parse_sums
from mlos_repro.audit.trust import Malformed, parse_json
from mlos_repro.inspect.ar import ArReader
from mlos_repro.inspect.compressed import CompressedReader
from mlos_repro.inspect.cpio import CpioReader
from mlos_repro.inspect.detect import reader_for
from mlos_repro.inspect.fat import FatReader
from mlos_repro.inspect.gpt import GptReader
from mlos_repro.inspect.members import CONTENT_ERRORS, Reader, not_this_format
from mlos_repro.inspect.squashfs_index import Image
from mlos_repro.inspect.tar import TarReader
from mlos_repro.sbom.facts import described, kernel_and_packages

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30)

SUM = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Lines that are nearly valid SHA256SUMS lines, so the fuzzer reaches the name rules.
sums_lines = st.lists(st.one_of(
    st.builds(lambda n: f"{SUM}  {n}\n", st.text(max_size=30)),
    st.text(max_size=80).map(lambda t: t + "\n")), max_size=8).map(lambda ls: "".join(ls).encode())


@FUZZ
@given(st.one_of(st.binary(max_size=600), sums_lines))
def test_sha256sums_parser(data: bytes) -> None:
    try:
        sums = parse_sums(data, "SHA256SUMS")
    except MetaError:
        return
    for name in sums:
        assert not name.startswith("/") and ".." not in name.split("/") and name == name.strip()


release_like = st.fixed_dictionaries(
    {"format": st.sampled_from([FORMAT, FORMAT - 1, str(FORMAT)]), "name": st.text(max_size=8),
     "version": json_values,
     "profile": st.text(max_size=8), "build_date": st.sampled_from(["2025-12-01T00:00:00Z", "yesterday", 5]),
     "released": st.sampled_from(["2026-01-01T00:00:00Z", None]), "expires": st.text(max_size=21),
     "release_key": st.sampled_from(["A" * 40, "a" * 40, "x"]), "stages": json_values,
     "signed_after_build": json_values, "files": json_values})


@FUZZ
@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode()),
                 release_like.map(lambda v: json.dumps(v).encode())))
def test_release_info_parser(data: bytes) -> None:
    try:
        info = ReleaseInfo.parse(data, "release.json")
    except MetaError:
        return
    assert isinstance(info.files, dict) and all(isinstance(v, str) for v in info.files.values())


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)))
def test_json_reader_refuses_bombs_by_name(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_json(data, "x.json")


@FUZZ
@given(json_values)
def test_sbom_facts_on_any_json(value: Any) -> None:
    described(value)
    kernel, packages = kernel_and_packages(value)
    assert packages >= 0 and (kernel is None or isinstance(kernel, str))


MAGICS: dict[str, tuple[bytes, Reader]] = {
    "ar": (b"!<arch>\n", ArReader()),
    "cpio": (b"070701", CpioReader()),
    "gzip": (b"\x1f\x8b\x08\x00", CompressedReader()),
    "tar": (b"", TarReader()),
    "gpt": (b"", GptReader()),
    "fat": (b"", FatReader()),
}


def _read(data: bytes, reader: Reader | None) -> None:
    with tempfile.TemporaryDirectory(prefix="mlos-fuzz-") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        try:
            chosen = reader or reader_for(path)
            if chosen is not None:
                names = {m.name for m in chosen.members(path)}
                chosen.extract(path, set(list(names)[:3]), Path(tmp))
        except CONTENT_ERRORS as e:
            assert not_this_format(e), f"{type(e).__name__}: {e}"


@FUZZ
@given(st.sampled_from(sorted(MAGICS)), st.binary(max_size=4096))
def test_readers_on_hostile_bytes(kind: str, body: bytes) -> None:
    magic, reader = MAGICS[kind]
    data = magic + body
    if kind == "gpt":  # past detection: a protective MBR and a GPT header, then anything
        data = bytes(510) + b"\x55\xaa" + b"EFI PART" + body
    if kind == "fat":
        data = body[:3].ljust(3, b"\xeb") + b"MSDOS5.0" + body[3:509].ljust(499, b"\0") + b"\x55\xaa" + body[509:]
    _read(data, reader)


@FUZZ
@given(st.binary(max_size=2048))
def test_detection_on_hostile_bytes(data: bytes) -> None:
    _read(data, None)


@functools.cache
def small_squashfs() -> bytes:
    with tempfile.TemporaryDirectory(prefix="mlos-fuzz-sqfs-") as tmp:
        src = Path(tmp) / "src"
        (src / "d").mkdir(parents=True)
        (src / "d/file").write_bytes(b"hello " * 2000)
        (src / "tail").write_text("tail")
        (src / "link").symlink_to("tail")
        subprocess.run(["mksquashfs", str(src), f"{tmp}/img", "-quiet", "-noappend", "-comp", "gzip", "-b", "4096"],
                       check=True, stdout=subprocess.DEVNULL)
        return (Path(tmp) / "img").read_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(96, 1 << 16))
def test_squashfs_index_on_corrupted_images(flips: list[tuple[int, int]], cut: int) -> None:
    """A real image with bytes changed and its end cut: the metadata reader names what is
    wrong (a content error) or lists it; it never raises anything else or hangs."""
    data = bytearray(small_squashfs())
    for offset, value in flips:
        data[offset % len(data)] = value
    with tempfile.TemporaryDirectory(prefix="mlos-fuzz-") as tmp:
        path = Path(tmp) / "img"
        path.write_bytes(bytes(data[:max(cut, 96)]))
        try:
            image = Image(path)
            try:
                for entry in image.entries():
                    if entry.type == "file":
                        image.content_key(entry)
                        b"".join(image.read(entry))
            finally:
                image.close()
        except CONTENT_ERRORS as e:
            assert not_this_format(e), f"{type(e).__name__}: {e}"


# -- the recipe loader: whatever a recipe holds, a RecipeError naming file and key, or recipes ----

_RECIPES = Path(tempfile.mkdtemp(prefix="mlos-fuzz-recipes-"))
_BUILDER = (Path(__file__).resolve().parents[2] / "recipes" / "builder.toml").read_bytes()
# Values that reach the loader's rules: names, paths, argv, env, input specs, with hostile text.
hostile_text = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["a", "a\n", "x\x00y", "../etc", "/etc/passwd", "ok.txt", "a\\b", "é", "\x7f",
                     "stage:a", "path:recipes", "url:https://e.org/f#sha256=" + SUM, "deb:a=1#sha256=x"]))
toml_value = st.recursive(
    hostile_text | st.booleans() | st.integers(min_value=-3, max_value=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=12)
STAGE_KEYS = ["name", "outputs", "run", "env", "inputs", "privileged", "profiles", "builder",
              "description", "profile", "unknown"]
# A valid stage with one or two keys replaced by hostile values, so the fuzzer reaches each rule;
# and wholly random tables.
VALID: dict[str, Any] = {"name": "a", "outputs": ["x"], "run": [["true"]]}
stage_tables = st.one_of(
    st.builds(lambda over: {**VALID, **over},
              st.dictionaries(st.sampled_from(STAGE_KEYS), st.one_of(
                  hostile_text, st.lists(hostile_text, max_size=3),
                  st.lists(st.lists(hostile_text, min_size=1, max_size=3), min_size=1, max_size=2),
                  st.dictionaries(hostile_text, hostile_text, max_size=3)), max_size=2)),
    st.dictionaries(st.sampled_from(STAGE_KEYS), toml_value, max_size=8))


def _toml(value: Any) -> str:
    """TOML for `value` (inline tables and arrays; JSON string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml(v)}" for k, v in value.items()) + "}"


def _stages_toml(stages: list[dict[str, Any]]) -> bytes:
    return "".join("[[stage]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in s.items())
                   for s in stages).encode()


@FUZZ
@given(st.one_of(
    st.lists(stage_tables, max_size=3).map(_stages_toml),
    stage_tables.map(lambda s: _stages_toml([s])),
    st.binary(max_size=300)))
def test_recipe_loader_on_hostile_recipes(data: bytes) -> None:
    from mlos_repro.errors import RecipeError
    from mlos_repro.recipe import load_recipes

    recipes = _RECIPES / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "builder.toml").write_bytes(_BUILDER)
    (recipes / "stages.toml").write_bytes(data)
    with contextlib.suppress(RecipeError):
        loaded = load_recipes(recipes)
        for stage in loaded.stages.values():  # what loads is what the rules allow
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stage.name)
            assert not any(re.search(r"[\x00-\x1f\x7f\\]", o) for o in stage.outputs)
            assert not any("\0" in a for argv in stage.run for a in argv)
