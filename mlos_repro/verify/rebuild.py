"""`build --verify`: rebuild every stage in a varied environment and judge each output."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.errors import MlosReproError
from mlos_repro.executor import BuildResult, Executor
from mlos_repro.store import Store
from mlos_repro.verify import report
from mlos_repro.verify.layers import Difference, compare, compare_paths, manifest_side
from mlos_repro.verify.variations import Plan, describe


class Verdict:
    IDENTICAL = "identical"
    DIFFERS = "differs"
    FAILED = "failed"  # the varied build of the stage failed


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

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "output": self.output, "first": self.first, "second": self.second,
            "verdict": self.verdict, "error": self.error or None,
            "report": None if self.report_txt is None else
            {"txt": str(self.report_txt), "html": str(self.report_html)},
            "differences": [d.to_json() for d in self.differences],
        }


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


def verify(executor: Executor, store: Store, control: BuildResult, plan: Plan, out_dir: Path,
           settings: report.DiffoscopeSettings) -> VerifyResult:
    errors: dict[str, MlosReproError] = {}
    varied = executor.rebuild_varied(control, plan.variant, lambda name, e: errors.__setitem__(name, e))
    verdicts: list[OutputVerdict] = []
    for name, res in control.stages.items():
        for output, first in res.entry.outputs.items():
            if name in errors:
                verdicts.append(OutputVerdict(name, output, first, None, Verdict.FAILED,
                                              error=errors[name].message))
                continue
            entry = varied[name]
            second = entry.outputs[output]
            if first == second:
                verdicts.append(OutputVerdict(name, output, first, second, Verdict.IDENTICAL))
                continue
            verdict = OutputVerdict(name, output, first, second, Verdict.DIFFERS)
            with store.tempdir("diff") as work:
                a = _materialized(store, first, res.entry.kinds[output], work / "first" / output)
                b = _materialized(store, second, entry.kinds[output], work / "second" / output)
                label = f"{name}/{output}"
                ma, mb = res.entry.members.get(output), entry.members.get(output)
                if ma and mb:
                    # Both builds recorded member manifests: compare those, not the bytes.
                    sa = manifest_side(json.loads(store.blob_path(ma).read_bytes()), a, work / "layers")
                    sb = manifest_side(json.loads(store.blob_path(mb).read_bytes()), b, work / "layers")
                    verdict.differences = compare(sa, sb, (label,))
                else:
                    verdict.differences = compare_paths(a, b, label, work / "layers")
                dest = out_dir / "reports" / name / output
                verdict.report_txt, verdict.report_html = report.write(
                    label, verdict.differences, dest, work, settings)
            verdicts.append(verdict)
    result = VerifyResult(plan, verdicts)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".verify.json.{os.getpid()}"
    tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(out_dir / "verify.json")
    return result


def _materialized(store: Store, digest: str, kind: str, dest: Path) -> Path:
    """A file output is its blob (immutable, no copy); a tree is laid out under dest."""
    if kind == "tree":
        store.materialize(digest, kind, dest)
        return dest
    return store.blob_path(digest.removeprefix("sha256:"))
