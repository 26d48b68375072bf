"""Bad recipes exit 2 and name the file and key at fault."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro.errors import RecipeError
from mlos_repro.recipe import InputKind, load_recipes
from tests.conftest import mlos

GOOD = """
[[stage]]
name = "a"
outputs = ["a.txt"]
run = [["sh", "-c", "echo a > /out/a.txt"]]

[[stage]]
name = "b"
outputs = ["b.txt", "sub/dir"]
run = [["true"]]
env = {{ FOO = "bar" }}
[stage.inputs]
up = "stage:a"
src = "path:recipes/builder.toml"
tarball = "url:https://example.org/x-1.0.tar.gz#sha256={}"
pkg = "deb:linux-source-6.1=6.1.158-1#sha256={}"
""".format("ab" * 32, "cd" * 32)


def test_a_valid_recipe_loads(repo: Callable[..., Path]) -> None:
    recipes = load_recipes(repo(GOOD))
    b = recipes.stages["b"]
    assert b.upstream == ("a",)
    kinds = {i.name: i.kind for i in b.inputs}
    assert kinds == {"up": InputKind.STAGE, "src": InputKind.PATH, "tarball": InputKind.URL,
                     "pkg": InputKind.DEB}
    pkg = next(i for i in b.inputs if i.name == "pkg")
    assert (pkg.target, pkg.version, pkg.sha256) == ("linux-source-6.1", "6.1.158-1", "cd" * 32)
    assert b.env == (("FOO", "bar"),)


BAD = {
    "unknown key": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\ncolour = "red"\n',
                    "stage 'a'.colour", "unknown key"),
    "duplicate stage": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                        '[[stage]]\nname = "a"\noutputs = ["y"]\nrun = [["true"]]\n',
                        "stage 'a'.name", "duplicate stage name"),
    "unknown input stage": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                            '[stage.inputs]\nk = "stage:nope"\n',
                            "stage 'a'.inputs.k", "unknown stage 'nope'"),
    "cycle": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\ni = "stage:b"\n'
              '[[stage]]\nname = "b"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\ni = "stage:c"\n'
              '[[stage]]\nname = "c"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\ni = "stage:a"\n',
              "inputs", "dependency cycle: "),
    "unknown profile": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\nprofiles = ["huge"]\n',
                        "stage 'a'.profiles", "unknown profile 'huge'"),
    "override outside the stage's profiles": (
        '[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\nprofiles = ["release"]\n'
        '[stage.profile.small]\nenv = { A = "1" }\n',
        "stage 'a'.profile.small", "not part of profile 'small'"),
    "unknown override key": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                             '[stage.profile.release]\nprivileged = true\n',
                             "stage 'a'.profile.release.privileged", "unknown key"),
    "override output escaping /out": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                                      '[stage.profile.release]\noutputs = ["x", "../y"]\n',
                                      "stage 'a'.profile.release.outputs[1]", "escapes /out"),
    "override run not an argv": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                                 '[stage.profile.release]\nrun = ["make all"]\n',
                                 "stage 'a'.profile.release.run[0]", "must be a non-empty list of strings"),
    "override dropping a signed output": (
        '[[stage]]\nname = "a"\noutputs = ["x.efi"]\nrun = [["true"]]\n[[stage]]\nname = "b"\n'
        'outputs = ["d.raw", "e.raw"]\nrun = [["true"]]\nsecureboot = { "e.raw" = "a/x.efi" }\n'
        '[stage.profile.release]\noutputs = ["d.raw"]\n', "stage 'b'.profile.release.outputs",
        "drops 'e.raw', which the stage's secureboot table names"),
    "override dropping an output another stage signs with": (
        '[[stage]]\nname = "a"\noutputs = ["x.efi"]\nrun = [["true"]]\n[stage.profile.release]\n'
        'outputs = ["y.efi"]\n[[stage]]\nname = "b"\noutputs = ["d.raw"]\nrun = [["true"]]\n'
        'secureboot = { "d.raw" = "a/x.efi" }\n', "stage 'b'.secureboot.d.raw",
        "stage 'a' has no output 'x.efi' (y.efi)"),
    "bad override input": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                           '[stage.profile.release.inputs]\nu = "url:https://example.org/f.tgz"\n',
                           "stage 'a'.profile.release.inputs.u", "must be pinned with #sha256="),
    "input of an output the stage does not make": (
        '[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[[stage]]\nname = "b"\noutputs = ["y"]\n'
        'run = [["true"]]\n[stage.inputs]\ni = "stage:a/z"\n', "stage 'b'.inputs.i",
        "stage 'a' has no output 'z' in profile 'small' (x)"),
    "input of an output dropped by a profile": (
        '[[stage]]\nname = "a"\noutputs = ["x", "w"]\nrun = [["true"]]\n[stage.profile.release]\n'
        'outputs = ["x"]\n[[stage]]\nname = "b"\noutputs = ["y"]\nrun = [["true"]]\n[stage.inputs]\n'
        'i = "stage:a/w"\n', "stage 'b'.inputs.i", "stage 'a' has no output 'w' in profile 'release' (x)"),
    "input of an output path leaving the stage": (
        '[[stage]]\nname = "b"\noutputs = ["y"]\nrun = [["true"]]\n[stage.inputs]\ni = "stage:a/../x"\n',
        "stage 'b'.inputs.i", "or one of its outputs, e.g. stage:kernel/bzImage"),
    "input from another profile": (
        '[[stage]]\nname = "big"\noutputs = ["x"]\nrun = [["true"]]\nprofiles = ["release"]\n'
        '[[stage]]\nname = "b"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\ni = "stage:big"\n',
        "stage 'b'.inputs.i", "stage 'big' is not part of profile 'small' (only of release)"),
    "malformed digest": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
                         'u = "url:https://example.org/f.tgz#sha256=1234"\n',
                         "stage 'a'.inputs.u", "malformed sha256"),
    "unpinned url": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
                     'u = "url:https://example.org/f.tgz"\n',
                     "stage 'a'.inputs.u", "must be pinned"),
    "output escapes": ('[[stage]]\nname = "a"\noutputs = ["../etc/passwd"]\nrun = [["true"]]\n',
                       "stage 'a'.outputs[0]", "escapes /out"),
    "absolute output": ('[[stage]]\nname = "a"\noutputs = ["/etc/passwd"]\nrun = [["true"]]\n',
                        "stage 'a'.outputs[0]", "escapes /out"),
    "empty run": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = []\n',
                  "stage 'a'.run", "non-empty list of argv"),
    "shell string run": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = ["make all"]\n',
                         "stage 'a'.run[0]", "argv"),
    "path escapes": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
                     'p = "path:../outside"\n', "stage 'a'.inputs.p", "stays inside"),
    "unknown builder": ('[[stage]]\nname = "a"\nbuilder = "nope"\noutputs = ["x"]\nrun = [["true"]]\n',
                        "stage 'a'.builder", "unknown environment 'nope'"),
    "reserved env": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                     'env = { SOURCE_DATE_EPOCH = "1" }\n',
                     "stage 'a'.env.SOURCE_DATE_EPOCH", "fixed by the sandbox"),
    "bad toml": ('[[stage]\nname = "a"\n', "recipes/stages.toml", "not valid TOML"),
    "unknown env input": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
                          'm = "env:nope"\n', "stage 'a'.inputs.m", "unknown environment 'nope'"),
    "malformed env input": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
                            'm = "env:"\n', "stage 'a'.inputs.m", "name an environment"),
    "stage name with a trailing newline": ('[[stage]]\nname = "a\\n"\noutputs = ["x"]\nrun = [["true"]]\n',
                                           "stage[0].name", "required: letters"),
    "input name with a trailing newline": (
        '[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n"p\\n" = "path:recipes"\n',
        "stage 'a'.inputs.p", "input names are letters"),
    "control characters in an output name": (
        '[[stage]]\nname = "a"\noutputs = ["a.txt\\n1111  nl/forged.txt"]\nrun = [["true"]]\n',
        "stage 'a'.outputs[0]", "control character or backslash"),
    "NUL in an env value": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                            'env = { A = "x\\u0000y" }\n', "stage 'a'.env.A", "NUL character"),
    "NUL in a run argument": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["echo", "x\\u0000y"]]\n',
                              "stage 'a'.run[0]", "NUL character"),
    "url with a trailing newline": (
        '[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n[stage.inputs]\n'
        f'u = "url:https://example.org/f.tgz\\n#sha256={"a" * 64}"\n', "stage 'a'.inputs.u", "not an http(s) URL"),
    "privileged not a boolean": ('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                                 'privileged = "yes"\n', "stage 'a'.privileged", "must be true or false"),
    "secureboot naming no output of the stage": (
        '[[stage]]\nname = "a"\noutputs = ["x.efi"]\nrun = [["true"]]\n[[stage]]\nname = "b"\noutputs = ["d.raw"]\n'
        'run = [["true"]]\nsecureboot = { "e.raw" = "a/x.efi" }\n', "stage 'b'.secureboot.e.raw",
        "not an output of this stage (d.raw)"),
    "secureboot naming no EFI image": (
        '[[stage]]\nname = "b"\noutputs = ["d.raw"]\nrun = [["true"]]\nsecureboot = { "d.raw" = "a/x.img" }\n',
        "stage 'b'.secureboot.d.raw", 'must name another stage\'s EFI image output, as "STAGE/NAME.efi"'),
    "secureboot naming an unknown stage": (
        '[[stage]]\nname = "b"\noutputs = ["d.raw"]\nrun = [["true"]]\nsecureboot = { "d.raw" = "uki/x.efi" }\n',
        "stage 'b'.secureboot.d.raw", "unknown stage 'uki'"),
    "secureboot naming another stage's missing output": (
        '[[stage]]\nname = "a"\noutputs = ["x.efi"]\nrun = [["true"]]\n[[stage]]\nname = "b"\noutputs = ["d.raw"]\n'
        'run = [["true"]]\nsecureboot = { "d.raw" = "a/y.efi" }\n', "stage 'b'.secureboot.d.raw",
        "stage 'a' has no output 'y.efi' (x.efi)"),
    "secureboot not a table": ('[[stage]]\nname = "b"\noutputs = ["d.raw"]\nrun = [["true"]]\nsecureboot = "a/x.efi"\n',
                               "stage 'b'.secureboot", "must be a table"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_exits_2_naming_file_and_key(case: str, repo: Callable[..., Path]) -> None:
    text, key, message = BAD[case]
    recipes = repo(text)
    with pytest.raises(RecipeError) as info:
        load_recipes(recipes)
    problem = next((p for p in info.value.problems if message in p), None)
    assert problem is not None, info.value.problems
    assert problem.startswith("recipes/stages.toml")
    assert key in problem

    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out",
                  "--store", recipes.parent / "store")
    assert result.code == 2, result.stderr
    assert "recipes/stages.toml" in result.stderr and message in result.stderr
    assert not (recipes.parent / "out").exists()


@pytest.mark.parametrize("name", ["stages.toml", "builder.toml"])
def test_a_recipe_that_is_not_utf8_is_named(name: str, repo: Callable[..., Path]) -> None:
    recipes = repo('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n')
    (recipes / name).write_bytes(b'# caf\xe9\n' + (recipes / name).read_bytes())
    result = mlos("build", "--recipes", recipes, "--store", recipes.parent / "store")
    assert result.code == 2, result.stderr
    assert f"recipes/{name}: not UTF-8 (byte 5)" in result.stderr


def test_env_inputs_and_privileged_stages_load(repo: Callable[..., Path]) -> None:
    recipes = load_recipes(repo('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n'
                                'privileged = true\n[stage.inputs]\nmirror = "env:default"\n'
                                '[[stage]]\nname = "b"\noutputs = ["x"]\nrun = [["true"]]\n'))
    a, b = recipes.stages["a"], recipes.stages["b"]
    (mirror,) = a.inputs
    assert (mirror.kind, mirror.target) == (InputKind.ENV, "default")
    assert a.privileged and not b.privileged
    # Privilege is part of what a stage is (its cache key), and absent when not asked for.
    assert a.normalized()["privileged"] is True and "privileged" not in b.normalized()


def test_secureboot_media_load_and_stay_out_of_the_cache_key(repo: Callable[..., Path]) -> None:
    recipes = load_recipes(repo('[[stage]]\nname = "a"\noutputs = ["x.efi"]\nrun = [["true"]]\n'
                                '[[stage]]\nname = "b"\noutputs = ["d.raw", "d.qcow2"]\nrun = [["true"]]\n'
                                'secureboot = { "d.raw" = "a/x.efi", "d.qcow2" = "a/x.efi" }\n'))
    b = recipes.stages["b"]
    assert b.secureboot == (("d.qcow2", "a/x.efi"), ("d.raw", "a/x.efi"))
    # What the release does with the outputs changes no output.
    assert "secureboot" not in b.normalized()


def test_cycle_is_named(repo: Callable[..., Path]) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipes(repo(BAD["cycle"][0]))
    cycle = next(p for p in info.value.problems if "cycle" in p).split("dependency cycle: ")[1]
    nodes = cycle.split(" -> ")
    assert nodes[0] == nodes[-1] and set(nodes) == {"a", "b", "c"}


def test_every_problem_is_reported_at_once(repo: Callable[..., Path]) -> None:
    text = BAD["unknown key"][0] + BAD["empty run"][0].replace('"a"', '"z"')
    with pytest.raises(RecipeError) as info:
        load_recipes(repo(text))
    assert len(info.value.problems) == 2


def test_builder_toml_problems_are_named(repo: Callable[..., Path]) -> None:
    recipes = repo(GOOD)
    (recipes / "builder.toml").write_text(
        'source_date_epoch = "yesterday"\n[environment.default]\nsuite = "bookworm"\n'
        'architecture = "amd64"\nmirror = "http://deb.debian.org/debian"\npackges = ["gcc"]\n'
        'keyring = "keyrings/ubuntu.gpg"\n')
    with pytest.raises(RecipeError) as info:
        load_recipes(recipes)
    text = "\n".join(info.value.problems)
    assert "recipes/builder.toml: source_date_epoch" in text
    assert "recipes/builder.toml: environment.default.packges: unknown key" in text
    assert "recipes/builder.toml: environment.default.keyring: must be the absolute path" in text


def test_missing_recipe_dir_is_bad_input(tmp_path: Path) -> None:
    result = mlos("build", "--recipes", tmp_path / "nope", "--store", tmp_path / "s")
    assert result.code == 2
    assert "does not exist" in result.stderr


PROFILED = """
[[stage]]
name = "kernel"
outputs = ["k"]
run = [["true"]]
env = { MLOS_PROFILE = "small", KEEP = "yes" }
[stage.inputs]
src = "path:recipes/builder.toml"
[stage.profile.release]
env = { MLOS_PROFILE = "release" }
inputs.extra = "url:https://example.org/x.tar.gz#sha256=%s"
outputs = ["k", "modules"]
run = [["true"], ["make", "modules"]]

[[stage]]
name = "heavy"
outputs = ["h"]
run = [["true"]]
profiles = ["release"]
[stage.inputs]
k = "stage:kernel"
m = "stage:kernel/modules"
""" % ("ab" * 32)


def test_a_profile_overrides_env_inputs_outputs_and_run_and_selects_stages(repo: Callable[..., Path]) -> None:
    recipes = repo(PROFILED)
    small = load_recipes(recipes)
    assert small.profile == "small" and set(small.stages) == {"kernel"}
    assert dict(small.stages["kernel"].env) == {"MLOS_PROFILE": "small", "KEEP": "yes"}
    assert [i.name for i in small.stages["kernel"].inputs] == ["src"]
    release = load_recipes(recipes, "release")
    assert set(release.stages) == {"kernel", "heavy"}
    kernel = release.stages["kernel"]
    assert dict(kernel.env) == {"MLOS_PROFILE": "release", "KEEP": "yes"}
    assert [i.name for i in kernel.inputs] == ["extra", "src"]
    assert kernel.outputs == ("k", "modules") and small.stages["kernel"].outputs == ("k",)
    assert kernel.run == (("true",), ("make", "modules")) and small.stages["kernel"].run == (("true",),)
    assert kernel.normalized() != small.stages["kernel"].normalized()  # distinct cache keys
    whole, one = release.stages["heavy"].inputs
    assert (whole.target, whole.output, one.target, one.output) == ("kernel", None, "kernel", "modules")
    assert whole.selected({"k": 1, "modules": 2}) == {"k": 1, "modules": 2}
    assert one.selected({"k": 1, "modules": 2}) == {"modules": 2}
    assert release.stages["heavy"].upstream == ("kernel", "kernel")


def test_an_unknown_profile_on_the_command_line_is_bad_input(repo: Callable[..., Path]) -> None:
    recipes = repo(PROFILED)
    result = mlos("build", "--profile", "huge", "--recipes", recipes, "--out", recipes.parent / "out",
                  "--store", recipes.parent / "store")
    assert result.code == 2
    assert "unknown profile 'huge'; the recipes define small, release" in result.stderr
    assert not (recipes.parent / "out").exists()


def test_an_unpinned_url_fails_only_the_profiles_that_build_it(repo: Callable[..., Path]) -> None:
    url = "https://downloads.mlos.example/thing-1.0.tar.gz"
    text = f"""
[[stage]]
name = "thing"
outputs = ["x"]
run = [["true"]]
profiles = ["release"]
[stage.inputs]
archive = "url:{url}#sha256=unpinned"
"""
    recipes = repo(text)
    assert "thing" not in load_recipes(recipes).stages
    with pytest.raises(RecipeError) as info:
        load_recipes(recipes, "release")
    (problem,) = info.value.problems
    assert "stage 'thing'.inputs.archive" in problem and f"run: mlos-repro pin {url}" in problem
    bad = repo(text.replace("url:", "deb:").replace(url, "thing=1.0"))
    with pytest.raises(RecipeError, match="malformed sha256 'unpinned'"):
        load_recipes(bad)
