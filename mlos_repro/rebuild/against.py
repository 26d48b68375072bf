"""Rebuild a release's stages from nothing and judge every artifact against its SHA256SUMS.

The rebuild is one build of every stage, uncached and under the rebuilder's variations
(rebuild/variations.py); each stage takes its upstream outputs from this rebuild, as a
stranger's build would. An artifact is a stage output: a file, or a tree whose files
SHA256SUMS lists one by one. It matches when the rebuilt files are exactly the released
ones (the files the archive key made after the build, its APT signatures, are not a
build's and are left out). A differing artifact gets the layered report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.errors import MlosReproError, StageFailedError
from mlos_repro.executor import BuildResult, Executor
from mlos_repro.inspect import report
from mlos_repro.inspect.layers import Difference, compare_paths
from mlos_repro.rebuild.varied import headline, materialized
from mlos_repro.store import Store, artifact_files, output_files

PASSED, FAILED = "PASSED", "FAILED"


@dataclass
class ArtifactVerdict:
    stage: str
    output: str
    released: dict[str, str]  # name -> sha256, as SHA256SUMS lists the artifact's files
    rebuilt: dict[str, str]
    result: str
    differences: list[Difference] = field(default_factory=list)
    report_txt: Path | None = None
    report_html: Path | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.output}"

    @property
    def member(self) -> str:
        """The innermost differing member, or why there is no rebuilt artifact."""
        return headline(self.differences, self.error)

    def to_json(self, base: Path | None = None) -> dict[str, Any]:
        """Report paths relative to `base` when given (rebuild.json names them inside its directory)."""
        def where(path: Path | None) -> str:
            return str(path if base is None or path is None else path.relative_to(base))

        return {"artifact": self.name, "result": self.result, "member": self.member or None,
                "error": self.error or None,
                "report": None if self.report_txt is None else
                {"txt": where(self.report_txt), "html": where(self.report_html)},
                "differences": [d.to_json() for d in self.differences]}


def rebuild_against(executor: Executor, release: Path, sums: dict[str, str],
                    stages: dict[str, dict[str, str]], leave_out: frozenset[str], out_dir: Path,
                    settings: report.DiffoscopeSettings) -> tuple[BuildResult, list[ArtifactVerdict]]:
    """Build every stage of the release with `executor` and judge each artifact; a stage that
    fails makes its artifacts (and those of the stages that need it) FAILED with its error,
    and the others are still judged."""
    errors: dict[str, MlosReproError] = {}

    def failed(stage: str, error: MlosReproError) -> None:
        # A stage that fails is a verdict on the release; a missing tool, a full disk or a
        # damaged store is the rebuilder's to fix, and nothing is signed.
        if not isinstance(error, StageFailedError):
            raise error
        errors[stage] = error

    result = executor.build(tuple(stages), on_error=failed)
    verdicts = []
    for stage, outputs in sorted(stages.items()):
        for output in sorted(outputs):
            name = f"{stage}/{output}"
            released = artifact_files(sums, name, leave_out)
            if stage not in result.stages:
                error = errors[stage].message if stage in errors else "the stage was not rebuilt"
                verdicts.append(ArtifactVerdict(stage, output, released, {}, FAILED, error=error))
                continue
            entry = result.stages[stage].entry
            rebuilt = artifact_files(output_files(executor.store, stage, entry), name, leave_out)
            verdict = ArtifactVerdict(stage, output, released, rebuilt,
                                      PASSED if rebuilt == released else FAILED)
            if verdict.result == FAILED:
                _explain(executor.store, verdict, release, entry.outputs[output], entry.kinds[output],
                         leave_out, out_dir, settings)
            verdicts.append(verdict)
    report.index(out_dir / "reports", [(v.name, v.result, v.report_html, v.member) for v in verdicts])
    return result, verdicts


def _explain(store: Store, verdict: ArtifactVerdict, release: Path, digest: str, kind: str,
             leave_out: frozenset[str], out_dir: Path, settings: report.DiffoscopeSettings) -> None:
    with store.tempdir("rebuild-diff") as work:
        theirs = release / "artifacts" / verdict.name
        if theirs.is_dir():
            # The released tree without what the archive key added after the build.
            copy = work / "released" / verdict.output
            shutil.copytree(theirs, copy, symlinks=True,
                            ignore=lambda d, names: [n for n in names
                                                     if (Path(d) / n).relative_to(release / "artifacts")
                                                     .as_posix() in leave_out])
            theirs = copy
        ours = materialized(store, digest, kind, work / "rebuilt" / verdict.output)
        verdict.differences = compare_paths(theirs, ours, verdict.name, work / "layers")
        verdict.report_txt, verdict.report_html = report.write(
            verdict.name, verdict.differences, out_dir / "reports" / verdict.stage / verdict.output, work,
            settings)
