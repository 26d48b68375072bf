"""What a rebuilder found, as SLSA verification summaries (VSA v1) in in-toto statements.

One statement per artifact (a stage output), signed by the rebuilder's key in a DSSE
envelope and written to ATTESTATIONS/vsa/STAGE/OUTPUT.intoto.json:

    subject              the artifact's files with the digests the release lists (SHA256SUMS)
    verifier.id          the rebuilder's identity
    timeVerified         when it was rebuilt (the only field that is not deterministic)
    resourceUri          mlos-release:NAME@VERSION#STAGE/OUTPUT
    policy               what was done: mlos-repro's rebuild, with the variations applied
    inputAttestations    release.json and SHA256SUMS of the release rebuilt, by sha256
    verificationResult   PASSED when every rebuilt file is the released file, else FAILED
    verifiedLevels       ["MLOS_REBUILD_IDENTICAL"] when PASSED, else []
    rebuild              mlos-repro's own fields: the variations, the rebuilt digests where they
                         differ, the innermost differing member and the report's sha256

`verify --rebuild` counts a summary only for exactly the release and digests it judges.
"""

from __future__ import annotations

from typing import Any

from mlos_repro import __version__

VSA = "https://slsa.dev/verification_summary/v1"
POLICY_URI = "https://mlos.example/mlos-repro/rebuild/v1"
LEVEL = "MLOS_REBUILD_IDENTICAL"
PASSED, FAILED = "PASSED", "FAILED"
RELEASE_INFO_URI, SUMS_URI = "release.json", "SHA256SUMS"


def resource_uri(name: str, version: str, artifact: str) -> str:
    return f"mlos-release:{name}@{version}#{artifact}"


def predicate(*, verifier: str, time: str, uri: str, release_info: str, sums: str, result: str,
              variations: list[str], rebuilt: dict[str, str], released: dict[str, str], member: str,
              report: str | None) -> dict[str, Any]:
    differing = {k: v for k, v in sorted(rebuilt.items()) if released.get(k) != v}
    missing = sorted(set(released) - set(rebuilt))
    return {
        "verifier": {"id": verifier, "version": {"mlos-repro": __version__}},
        "timeVerified": time,
        "resourceUri": uri,
        "policy": {"uri": POLICY_URI},
        "inputAttestations": [{"uri": RELEASE_INFO_URI, "digest": {"sha256": release_info}},
                              {"uri": SUMS_URI, "digest": {"sha256": sums}}],
        "verificationResult": result,
        "verifiedLevels": [LEVEL] if result == PASSED else [],
        "rebuild": {"variations": variations, "differing": differing, "missing": missing,
                    "member": member or None, "report_sha256": report},
    }
