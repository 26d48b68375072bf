"""build --verify: variations catch the leaks they vary, reports name the file and the value."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro.rebuild.variations import NAMES
from tests.conftest import PROJECT, mlos

REPRODUCIBLE = r"""
[[stage]]
name = "clean"
outputs = ["sorted.txt", "pkg.tar.gz", "hello"]
run = [["sh", "-c", '''
  set -e
  LC_ALL=C.UTF-8 ls /in/src | LC_ALL=C.UTF-8 sort > /out/sorted.txt
  mkdir -p d/usr/lib
  echo ID=mlos > d/usr/lib/os-release
  tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner --mode=go-w -C d -cf - . | gzip -n > /out/pkg.tar.gz
  cc -O2 -o /out/hello /in/src/hello.c
  chmod 0755 /out/hello
''']]
[stage.inputs]
src = "path:data"
"""

# One deliberately unreproducible stage per variation: (shell snippet, what the report shows).
LEAKS: dict[str, tuple[str, str]] = {
    "environment": ("env | grep '^MLOS_VARIED' || echo none", "MLOS_VARIED_ENV=1"),
    "exec_path": ('echo "$PATH"', "/nonexistent/mlos-varied/bin"),
    "home": ('echo "$HOME"', "/nonexistent/mlos-varied-home"),
    "locales": ("printf 'z\\nt\\ns\\n' | sort | tr '\\n' ' '", "s z t"),
    "timezone": ("date -d @0 +hour=%H", "hour=14"),
    "time": ("date +year=%Y", "year={next_year}"),
    "build_path": ("pwd", "/build/mlos-varied/build-path"),
    "fileordering": ("ls -f /in/src | tr '\\n' ' '", ""),
    "user_group": ("id -u", "1000"),
    "hostname": ("hostname", "mlos-varied-host"),
    "domain_host": ("domainname", "mlos-varied.example"),
    "kernel": ("uname -r", "2.6."),
    "aslr": ("cat /proc/self/personality", "0040000"),
    "num_cpus": ("nproc", "+1"),
    "umask": ("umask", "0002"),
}


def _data(recipes: Path, files: int = 24) -> None:
    data = recipes.parent / "data"
    data.mkdir()
    for i in range(files):
        (data / f"f{i:02d}").write_text(f"{i}\n")
    (data / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')


def _verify(recipes: Path, store: Path, *extra: str) -> tuple[int, dict[str, object], str]:
    out = recipes.parent / "out"
    result = mlos("build", "--verify", "--recipes", recipes, "--out", out, "--store", store, *extra)
    report = json.loads((out / "verify.json").read_text()) if (out / "verify.json").exists() else {}
    return result.code, report, result.stderr


def test_a_reproducible_stage_passes_every_variation(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo(REPRODUCIBLE)
    _data(recipes)
    code, report, err = _verify(recipes, shared_store)
    assert code == 0, err
    assert report["reproducible"] is True
    variations = report["variations"]
    assert isinstance(variations, dict)
    applied = [v["name"] for v in variations["applied"]]
    skipped = [v["name"] for v in variations["skipped"]]
    assert sorted(applied + skipped) == sorted(NAMES)  # nothing silently dropped
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    # Each output, and its SBOM made again from the varied build's bytes.
    assert {o["output"]: o["verdict"] for o in outputs} == {
        "sorted.txt": "identical", "pkg.tar.gz": "identical", "hello": "identical",
        "sorted.txt.cdx.json": "identical", "pkg.tar.gz.cdx.json": "identical", "hello.cdx.json": "identical"}
    assert "reproducible" in err

# The variations whose values show in what these leaks write (the others leave no string of theirs).
TRACED = {"environment", "exec_path", "home", "time", "build_path", "hostname", "domain_host", "kernel"}


@pytest.mark.parametrize("variation", sorted(LEAKS))
def test_each_variation_catches_its_leak(variation: str, shared_store: Path,
                                         repo: Callable[..., Path]) -> None:
    snippet, shown = LEAKS[variation]
    recipes = repo(f"""
        [[stage]]
        name = "leak"
        outputs = ["leak.txt"]
        run = [["sh", "-c", {json.dumps("{ " + snippet + "; } > /out/leak.txt")}]]
        [stage.inputs]
        src = "path:data"
    """)
    _data(recipes)
    code, report, err = _verify(recipes, shared_store, f"--vary=-all,+{variation}")
    variations = report["variations"]
    assert isinstance(variations, dict)
    if variation in [s["name"] for s in variations["skipped"]]:
        pytest.fail(f"{variation} was skipped on this host: {variations['skipped']}")
    assert [v["name"] for v in variations["applied"]] == [variation]
    assert code == 1, err
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    (leak,) = outputs
    assert leak["verdict"] == "differs"
    assert leak["differences"][0]["path"] == "leak/leak.txt"
    # Where the variation leaves a trace of its own values, the difference names it.
    likely = [s["variation"] for s in leak["differences"][0]["likely"]]
    if variation in TRACED:
        assert likely == [variation], leak["differences"]
        assert f"likely: {variation} (" in Path(leak["report"]["txt"]).read_text()
    text = Path(leak["report"]["txt"]).read_text()
    assert "leak/leak.txt" in text
    expected = shown.format(next_year=time.gmtime().tm_year + 1)
    if variation == "time":  # 398 days ahead: next year, or the one after in December
        years = {int(y) for y in re.findall(r"\+year=(\d{4})", text)}
        assert years and min(years) >= time.gmtime().tm_year + 1, text
    else:
        assert expected in text, text
    assert Path(leak["report"]["html"]).read_text().startswith("<!DOCTYPE html>") or \
        "<html" in Path(leak["report"]["html"]).read_text()


def test_build_stays_writable_when_the_working_directory_moves(shared_store: Path,
                                                              repo: Callable[..., Path]) -> None:
    """The varied working directory is below /build, and /build is as writable as in the first build."""
    recipes = repo("""
        [[stage]]
        name = "scratch"
        outputs = ["scratch.txt"]
        run = [["sh", "-c", "mkdir -p /build/cache && echo kept > /build/cache/x && cat /build/cache/x > /out/scratch.txt"]]
        [stage.inputs]
        src = "path:data"
    """)
    _data(recipes)
    code, report, err = _verify(recipes, shared_store, "--vary=-all,+build_path")
    assert [v["name"] for v in report["variations"]["applied"]] == ["build_path"]  # type: ignore[index]
    assert code == 0, err
    assert report["reproducible"] is True, report


@pytest.mark.root
def test_a_privileged_stage_passes_every_variation(shared_store: Path, repo: Callable[..., Path]) -> None:
    """The varied build of a stage with root powers (as the root filesystem's) on this machine's
    executor: real ownership in its output, the same bytes under every variation."""
    recipes = repo("""
        [[stage]]
        name = "owned"
        privileged = true
        outputs = ["owned.tar"]
        run = [["sh", "-c", "mkdir t && cp /in/src/f01 t/ && chown -R 1234:5678 t && chmod 0750 t && chmod 0640 t/f01 && tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --numeric-owner -cf /out/owned.tar t"]]
        [stage.inputs]
        src = "path:data"
    """)
    _data(recipes)
    code, report, err = _verify(recipes, shared_store)
    assert code == 0, err
    assert report["reproducible"] is True, report
    listing = subprocess.run(["tar", "-tvf", recipes.parent / "out/owned/owned.tar", "--numeric-owner"],
                             capture_output=True, text=True, check=True).stdout
    assert "1234/5678" in listing, listing


def test_a_deb_whose_data_tar_differs_in_one_mtime(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo(r"""
        [[stage]]
        name = "pkg"
        outputs = ["mlos-demo_1.0_all.deb"]
        run = [["sh", "-c", '''
          set -e
          mkdir -p p/DEBIAN p/usr/share/mlos-demo
          printf 'Package: mlos-demo\nVersion: 1.0\nArchitecture: all\nMaintainer: MLOS <mlos@example.org>\nDescription: demo\n' > p/DEBIAN/control
          echo data > p/usr/share/mlos-demo/readme
          echo stamp > p/usr/share/mlos-demo/stamp
          find p -exec touch -h -d @$SOURCE_DATE_EPOCH {} +
          # dpkg-deb clamps mtimes to SOURCE_DATE_EPOCH: leak a year well before it.
          touch -d "$(( $(date +%Y) - 10 ))-06-01 00:00 UTC" p/usr/share/mlos-demo/stamp
          dpkg-deb --root-owner-group -Zxz --build p /out/mlos-demo_1.0_all.deb
        ''']]
    """)
    code, report, err = _verify(recipes, shared_store, "--vary=-all,+time")
    assert code == 1, err
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    diffs = outputs[0]["differences"]
    assert [(d["path"], d["aspect"]) for d in diffs] == [
        ("pkg/mlos-demo_1.0_all.deb → data.tar.xz → usr/share/mlos-demo/stamp", "mtime")]


def test_vary_switches_and_skips_are_reported(shared_store: Path, repo: Callable[..., Path],
                                             tmp_path: Path) -> None:
    recipes = repo(REPRODUCIBLE)
    _data(recipes)
    code, report, err = _verify(recipes, shared_store, "--vary=-time,-fileordering")
    assert code == 0, err
    variations = report["variations"]
    assert isinstance(variations, dict)
    applied = {v["name"] for v in variations["applied"]}
    assert "time" not in applied and "fileordering" not in applied and "umask" in applied
    assert set(variations["disabled"]) == {"time", "fileordering"}

    # A host without disorderfs: the variation is skipped, with the reason, not dropped.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in os.listdir(d) if os.path.isdir(d) else []:
            if tool != "disorderfs" and not (bin_dir / tool).exists():
                (bin_dir / tool).symlink_to(os.path.join(d, tool))
    out = recipes.parent / "out2"
    result = mlos("build", "--verify", "--vary=-all,+fileordering,+umask", "--recipes", recipes,
                  "--out", out, "--store", shared_store, env={"PATH": str(bin_dir)})
    assert result.code == 0, result.stderr
    skipped = json.loads((out / "verify.json").read_text())["variations"]["skipped"]
    assert skipped == [{"name": "fileordering",
                        "reason": "disorderfs is not installed (apt-get install disorderfs)"}]
    assert "skipped fileordering" in result.stderr

    bad = mlos("build", "--verify", "--vary=-colour", "--recipes", recipes, "--store", shared_store)
    assert bad.code == 2 and "unknown variation 'colour'" in bad.stderr


def test_a_stage_failing_only_when_varied_is_a_failed_verdict(shared_store: Path,
                                                             repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "rootonly"
        outputs = ["x"]
        run = [["sh", "-c", "test $(id -u) = 0 && echo ok > /out/x"]]
    """)
    code, report, err = _verify(recipes, shared_store, "--vary=-all,+user_group")
    assert code == 1, err
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    assert outputs[0]["verdict"] == "failed" and "exited with status 1" in outputs[0]["error"]
    # The table stays one line; the cause follows it, with what the second build varied.
    assert "the varied build of the stage failed (below)" in err
    assert "rootonly failed only in the second build, which varied: user_group" in err
    assert "test $(id -u) = 0" in err.split("failed only in the second build")[1]


def chromium(page: Path, work: Path) -> tuple[str, Path]:
    """Render `page` in headless Chromium as a person would see it: the text of the rendered
    page (printed to PDF, read back by pdftotext) and a screenshot."""
    browser = shutil.which("chromium")
    if browser is None or shutil.which("pdftotext") is None:
        pytest.fail("the report tests need chromium and poppler-utils: run scripts/install-deps")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
             f"--user-data-dir={work / 'chromium-profile'}", "--window-size=1280,1400"]
    pdf, png = work / f"{page.stem}.pdf", work / f"{page.stem}.png"
    for what in (f"--print-to-pdf={pdf}", f"--screenshot={png}"):
        subprocess.run([browser, *flags, "--no-pdf-header-footer", what, page.as_uri()], check=True,
                       capture_output=True, timeout=120)
    text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    return text, png


def test_reports_read_as_a_person_sees_them(shared_store: Path, repo: Callable[..., Path],
                                           tmp_path: Path) -> None:
    """reports/index.html lists every verdict and links the report of what differs; the report
    opens with our summary (member paths, modes as rwxr-xr-x, owners, dates) and names members
    in diffoscope's part by their paths, never by temporary ones."""
    recipes = repo(r"""
        [[stage]]
        name = "bundle"
        outputs = ["bundle.tar", "same.txt"]
        run = [["sh", "-c", '''
          set -e
          mkdir -p b/etc
          hostname > b/etc/built-on
          echo mine > b/etc/umasked
          tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$SOURCE_DATE_EPOCH \
              -C b -cf /out/bundle.tar etc
          echo same > /out/same.txt
        ''']]
    """)
    code, report, err = _verify(recipes, shared_store, "--vary=-all,+hostname,+umask")
    assert code == 1 and report["reproducible"] is False, err
    out = recipes.parent / "out"
    index_text, index_png = chromium(out / "reports" / "index.html", tmp_path)
    # Every verdict, the differing one linked to its report.
    for line in ("bundle/bundle.tar", "bundle/same.txt", "differs", "identical", "report"):
        assert line in index_text, index_text
    index = (out / "reports" / "index.html").read_text()
    assert "href='bundle/bundle.tar.html'" in index
    text, png = chromium(out / "reports" / "bundle" / "bundle.tar.html", tmp_path)
    flat = " ".join(text.split())
    assert "4 difference(s) found by the layered comparison" in flat
    for row in (("etc", "mode", "rwxr-xr-x (0755)", "rwxrwxr-x (0775)"),
                ("etc/umasked", "mode", "rw-r--r-- (0644)", "rw-rw-r-- (0664)"),
                ("etc/built-on", "content", "sha256:")):
        assert re.search(r"bundle/bundle\.tar → " + r"\s+".join(map(re.escape, row)), flat), (row, flat)
    # (pdftotext drops a hyphen where a line broke at it: compared without hyphens.)
    unbroken = flat.replace("-", "").replace(" ", "")
    for cause in ("umask (mode 0644 -> 0664: only the group write bit differs)",
                  "hostname ('mlos-varied-host' in the second build only)",
                  "hostname: the build records the host's name"):
        assert cause.replace("-", "").replace(" ", "") in unbroken, (cause, flat)
    assert "likely cause" in flat and "what to do" in flat
    assert "diffoscope on the differing members" in flat
    assert "mlos-varied-host" in flat  # diffoscope's own diff of the member, set in our page
    assert "diffoscope/first" not in text and "/tmp" not in text and "000-" not in text, text
    # The pictures a person would have seen, kept for whoever reads the CI run.
    kept = PROJECT / "artifacts" / "reports"
    kept.mkdir(parents=True, exist_ok=True)
    for picture in (index_png, png):
        assert picture.stat().st_size > 10_000
        shutil.copyfile(picture, kept / picture.name)


def test_bisect_names_the_variation_no_trace_points_to(shared_store: Path, repo: Callable[..., Path],
                                                      unique: str) -> None:
    """The personality flag leaves no varied string behind: --bisect builds the stage again with
    one variation at a time and names the one under which it differs alone."""
    recipes = repo(f"""
        [[stage]]
        name = "quiet-leak"
        outputs = ["p.txt"]
        run = [["sh", "-c", "cat /proc/self/personality > /out/p.txt; echo {unique} >> /out/p.txt"]]
    """)
    code, report, err = _verify(recipes, shared_store, "--vary=-all,+aslr,+hostname,+umask", "--bisect")
    assert code == 1, err
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    (leak,) = [o for o in outputs if o["output"] == "p.txt"]
    assert leak["differences"][0]["likely"] == []
    assert leak["bisect"] == ["aslr"]
    assert "differs under aslr alone (--bisect)" in err
    assert "quiet-leak (aslr alone)" in err and "quiet-leak (umask alone)" in err
