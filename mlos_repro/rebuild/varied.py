"""`build --verify`: rebuild every stage in a varied environment and judge each output."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlos_repro.errors import MlosReproError
from mlos_repro.executor import BuildResult, Executor
from mlos_repro.fsutil import atomic_write
from mlos_repro.inspect import report
from mlos_repro.inspect.layers import Difference, compare, compare_paths, manifest_side
from mlos_repro.rebuild.suspects import Suspect, suspects
from mlos_repro.rebuild.variations import Plan, alone, describe
from mlos_repro.sbom.facts import SBOM_SUFFIX
from mlos_repro.store import Store


class Verdict:
    IDENTICAL = "identical"
    DIFFERS = "differs"
    FAILED = "failed"  # the varied build of the stage failed


def headline(differences: list[Difference], error: str) -> str:
    """A verdict in a few words: the innermost differing member, or why nothing was compared."""
    if differences:
        return differences[0].where
    return error.splitlines()[0] if error else ""


@dataclass
class OutputVerdict:
    stage: str
    output: str
    first: str
    second: str | None
    verdict: str
    differences: list[Difference] = field(default_factory=list)
    report_txt: Path | None = None
    report_html: Path | None = None
    error: str = ""
    likely: list[list[Suspect]] = field(default_factory=list)  # per difference: the variations it shows
    alone: list[str] | None = None  # --bisect: the variations under which it differs by itself

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "output": self.output, "first": self.first, "second": self.second,
            "verdict": self.verdict, "error": self.error or None,
            "report": None if self.report_txt is None else
            {"txt": str(self.report_txt), "html": str(self.report_html)},
            "differences": [{**d.to_json(), "likely": [s.to_json() for s in likely]}
                            for d, likely in zip(self.differences, self._likely(), strict=True)],
            "bisect": self.alone,
        }

    @property
    def member(self) -> str:
        return headline(self.differences, self.error)

    def _likely(self) -> list[list[Suspect]]:
        return [*self.likely, *([[]] * (len(self.differences) - len(self.likely)))]

    def causes(self) -> list[str]:
        """The variations each difference shows, as a line a person reads."""
        return ["; ".join(f"{s.variation} ({s.evidence})" for s in likely) for likely in self._likely()]

    def fixes(self) -> list[str]:
        """What to do about each variation the differences show, once each."""
        hints = {s.variation: s.hint for likely in self._likely() for s in likely}
        return [f"{name}: {hint}" for name, hint in hints.items()]


@dataclass
class VerifyResult:
    plan: Plan
    outputs: list[OutputVerdict]

    @property
    def reproducible(self) -> bool:
        return all(o.verdict == Verdict.IDENTICAL for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "reproducible": self.reproducible,
            "variations": {
                "applied": [{"name": n, "what": describe(n)} for n in self.plan.applied],
                "skipped": [{"name": n, "reason": r} for n, r in self.plan.skipped],
                "disabled": list(self.plan.disabled),
            },
            "note": "each stage was rebuilt from the first build's inputs, so a difference "
                    "belongs to the stage that shows it",
            "outputs": [o.to_json() for o in self.outputs],
        }


def varied_rebuild(executor: Executor, store: Store, control: BuildResult, plan: Plan, out_dir: Path,
                   settings: report.DiffoscopeSettings, *, bisect: bool = False) -> VerifyResult:
    errors: dict[str, MlosReproError] = {}
    judged = _Judged(plan.applied, executor.recipes.builder.source_date_epoch)
    varied = executor.rebuild_varied(control, plan.variant, lambda name, e: errors.__setitem__(name, e))
    verdicts: list[OutputVerdict] = []
    for name, res in control.stages.items():
        for output, first in res.entry.outputs.items():
            if name in errors:
                verdicts.append(OutputVerdict(name, output, first, None, Verdict.FAILED,
                                              error=errors[name].message))
                continue
            entry = varied[name]
            verdicts.append(_judge(store, name, output, (first, res.entry.kinds[output],
                                   res.entry.members.get(output)),
                                   (entry.outputs[output], entry.kinds[output], entry.members.get(output)),
                                   out_dir, settings, judged))
        if name in errors:
            continue
        # Each SBOM again, from the varied build's bytes, uncached: the same bytes or not. The
        # SBOM of an output that differs differs too (it names the bytes): it adds nothing there.
        identical = {v.output for v in verdicts if v.stage == name and v.verdict == Verdict.IDENTICAL}
        if not identical:
            continue
        entry = varied[name]
        mine = replace(entry, outputs={o: d for o, d in entry.outputs.items() if o in identical})
        try:
            second_sboms = executor.sboms(name, control, mine, use_cache=False)
        except MlosReproError as e:
            second_sboms, error = {}, e.message
        else:
            error = ""
        for output, first_sbom in control.sboms.get(name, {}).items():
            if output not in identical:
                continue
            label = output + SBOM_SUFFIX
            if output not in second_sboms:
                verdicts.append(OutputVerdict(name, label, f"sha256:{first_sbom}", None, Verdict.FAILED,
                                              error=error))
                continue
            verdicts.append(_judge(store, name, label, (f"sha256:{first_sbom}", "file", None),
                                   (f"sha256:{second_sboms[output]}", "file", None), out_dir, settings,
                                   judged))
    if bisect:
        _bisect(executor, control, plan, verdicts)
    result = VerifyResult(plan, verdicts)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.index(out_dir / "reports", [(f"{v.stage}/{v.output}", v.verdict, v.report_html, v.member)
                                       for v in verdicts])
    atomic_write(out_dir / "verify.json", json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return result


Side = tuple[str, str, str | None]  # digest, kind, member manifest


def _bisect(executor: Executor, control: BuildResult, plan: Plan, verdicts: list[OutputVerdict]) -> None:
    """For each output that differs with no variation's trace in it, build its stage again with
    one variation at a time: name those under which it differs by itself."""
    unexplained: dict[str, list[OutputVerdict]] = {}
    for v in verdicts:
        if v.verdict == Verdict.DIFFERS and not any(v.likely) and not v.output.endswith(SBOM_SUFFIX):
            unexplained.setdefault(v.stage, []).append(v)
    for stage, outputs in unexplained.items():
        for v in outputs:
            v.alone = []
        first = control.stages[stage].entry.outputs
        for name in plan.applied:
            failed: list[str] = []
            entries = executor.rebuild_varied(control, alone(name), functools.partial(_failed, failed),
                                              only=(stage,), why=f"{name} alone")
            for v in outputs:
                if failed or entries[stage].outputs[v.output] != first[v.output]:
                    assert v.alone is not None
                    v.alone.append(name)


def _failed(into: list[str], stage: str, error: MlosReproError) -> None:
    into.append(stage)


@dataclass(frozen=True, slots=True)
class _Judged:
    """What the second build varied: to name the variation a difference shows."""

    applied: tuple[str, ...]
    source_date_epoch: int


def _judge(store: Store, name: str, output: str, first: Side, second: Side, out_dir: Path,
           settings: report.DiffoscopeSettings, judged: _Judged) -> OutputVerdict:
    if first[0] == second[0]:
        return OutputVerdict(name, output, first[0], second[0], Verdict.IDENTICAL)
    verdict = OutputVerdict(name, output, first[0], second[0], Verdict.DIFFERS)
    with store.tempdir("diff") as work:
        a = materialized(store, first[0], first[1], work / "first" / output)
        b = materialized(store, second[0], second[1], work / "second" / output)
        label = f"{name}/{output}"
        if first[2] and second[2]:
            # Both builds recorded member manifests: compare those, not the bytes.
            sa = manifest_side(json.loads(store.blob_path(first[2]).read_bytes()), a, work / "layers")
            sb = manifest_side(json.loads(store.blob_path(second[2]).read_bytes()), b, work / "layers")
            verdict.differences = compare(sa, sb, (label,))
        else:
            verdict.differences = compare_paths(a, b, label, work / "layers")
        verdict.likely = [suspects(d, judged.applied, judged.source_date_epoch) for d in verdict.differences]
        dest = out_dir / "reports" / name / output
        verdict.report_txt, verdict.report_html = report.write(label, verdict.differences, dest, work,
                                                               settings, verdict.causes(), verdict.fixes())
    return verdict


def materialized(store: Store, digest: str, kind: str, dest: Path) -> Path:
    """A file output is its blob (immutable, no copy); a tree is laid out under dest."""
    if kind == "tree":
        store.materialize(digest, kind, dest)
        return dest
    return store.blob_path(digest.removeprefix("sha256:"))
