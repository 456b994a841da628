"""Concept methods: the registry. Each method is a module here with a pure `run(check, ctx) -> CheckResult`
(and optionally `validate`, see descriptor.Method), its schema and typed findings in auditor/schemas/.

Adding a method: its module, its schema, and one entry below (plus its report section). Importing this package
imports no torch and no numerics: run/validate/correct are resolved when called.
"""

from auditor.methods.descriptor import FindingKind, Lazy, Method, Reads
from auditor.schemas import artifact_probe, invert, rsvc, sacv, tcav

CONCEPT_KEY = ("model", "layer", "class", "concept")
PROBE_KEY = ("model", "class", "artifact")

METHODS: dict[str, Method] = {
    "tcav": Method(
        schema=tcav.TcavCheck, run=Lazy("auditor.methods.tcav", "run"),
        reads=Reads(layers=True, classes=True, concepts=True),
        findings={"": FindingKind(tcav.TcavFinding, CONCEPT_KEY, tcav.compare)},
        family="audit", correct=Lazy("auditor.methods.tcav", "correct_family"),
    ),
    "artifact_probe": Method(
        schema=artifact_probe.ArtifactProbeCheck, run=Lazy("auditor.methods.artifact", "run"),
        reads=Reads(pastes=True),
        findings={"": FindingKind(artifact_probe.ProbeFinding, PROBE_KEY, artifact_probe.compare)},
        family=None, validate=Lazy("auditor.methods.artifact", "validate"),
    ),
    "sacv": Method(
        schema=sacv.SacvCheck, run=Lazy("auditor.methods.sacv", "run"),
        reads=Reads(layers=True, classes=True, concepts=True, conv_layers=True),
        findings={"": FindingKind(sacv.SacvFinding, CONCEPT_KEY, sacv.compare)},
        family="check", validate=Lazy("auditor.methods.sacv", "validate"),
    ),
    "rsvc": Method(
        schema=rsvc.RsvcCheck, run=Lazy("auditor.methods.rsvc", "run"),
        reads=Reads(layers=True, classes=True),
        findings={"": FindingKind(rsvc.RsvcFinding, ("model", "other", "layer", "class", "concept"), rsvc.compare)},
        family=None, validate=Lazy("auditor.methods.rsvc_images", "validate"),
    ),
    "invert": Method(
        schema=invert.InvertCheck, run=Lazy("auditor.methods.invert", "run"),
        reads=Reads(layers=True, pastes=True),
        findings={
            "unit": FindingKind(invert.UnitFinding, ("model", "layer", "unit"), invert.compare_unit),
            "probe": FindingKind(invert.InvertProbeFinding, PROBE_KEY, invert.compare_probe),
        },
        family="check", validate=Lazy("auditor.methods.invert", "validate"), default_kind="unit",
    ),
}
