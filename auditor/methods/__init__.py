"""Concept methods: the registry. Each method is a module here with a pure `run(check, ctx) -> CheckResult`
(and optionally `validate`, see descriptor.Method), its schema and typed findings in auditor/schemas/.

Adding a method: its module, its schema, and one entry below (plus its report section). Importing this package
imports no torch and no numerics: run/validate/correct are resolved when called.
"""

from auditor.methods.descriptor import FindingKind, Lazy, Method, Reads
# Schemas by module under other names: `auditor.methods.tcav` etc. must stay the method modules.
from auditor.schemas import artifact_probe as _probe
from auditor.schemas import cladec as _cladec
from auditor.schemas import invert as _invert
from auditor.schemas import rsvc as _rsvc
from auditor.schemas import sacv as _sacv
from auditor.schemas import similarity as _sim
from auditor.schemas import tcav as _tcav

CONCEPT_KEY = ("model", "layer", "class", "concept")
PROBE_KEY = ("model", "class", "artifact")

METHODS: dict[str, Method] = {
    "tcav": Method(
        schema=_tcav.TcavCheck, run=Lazy("auditor.methods.tcav", "run"),
        reads=Reads(layers=True, classes=True, concepts=True),
        findings={"": FindingKind(_tcav.TcavFinding, CONCEPT_KEY, _tcav.compare)},
        family="audit", validate=Lazy("auditor.methods.concept_scores", "validate"),
        correct=Lazy("auditor.methods.tcav", "correct_family"),
    ),
    "artifact_probe": Method(
        schema=_probe.ArtifactProbeCheck, run=Lazy("auditor.methods.artifact", "run"),
        reads=Reads(pastes=True),
        findings={"": FindingKind(_probe.ProbeFinding, PROBE_KEY, _probe.compare)},
        family=None, validate=Lazy("auditor.methods.artifact", "validate"),
    ),
    "sacv": Method(
        schema=_sacv.SacvCheck, run=Lazy("auditor.methods.sacv", "run"),
        reads=Reads(layers=True, classes=True, concepts=True, conv_layers=True),
        findings={"": FindingKind(_sacv.SacvFinding, CONCEPT_KEY, _sacv.compare)},
        family="check", validate=Lazy("auditor.methods.sacv", "validate"),
    ),
    "rsvc": Method(
        schema=_rsvc.RsvcCheck, run=Lazy("auditor.methods.rsvc", "run"),
        reads=Reads(layers=True, classes=True),
        findings={"": FindingKind(_rsvc.RsvcFinding, ("model", "other", "layer", "class", "concept"), _rsvc.compare)},
        family=None, validate=Lazy("auditor.methods.rsvc_images", "validate"),
    ),
    "invert": Method(
        schema=_invert.InvertCheck, run=Lazy("auditor.methods.invert", "run"),
        reads=Reads(layers=True, pastes=True),
        findings={
            "unit": FindingKind(_invert.UnitFinding, ("model", "layer", "unit"), _invert.compare_unit),
            "probe": FindingKind(_invert.InvertProbeFinding, PROBE_KEY, _invert.compare_probe),
        },
        family="check", validate=Lazy("auditor.methods.invert", "validate"), default_kind="unit",
    ),
    "similarity": Method(
        schema=_sim.SimilarityCheck, run=Lazy("auditor.methods.similarity", "run"), reads=Reads(layers=True),
        findings={
            "concept": FindingKind(_sim.ConceptDepthFinding, _sim.CONCEPT_KEY, _sim.compare_concept),
            "cka": FindingKind(_sim.CkaFinding, _sim.CKA_KEY, _sim.compare_cka),
            "map": FindingKind(_sim.MapFinding, _sim.MAP_KEY, _sim.compare_map),
        },
        family=None, validate=Lazy("auditor.methods.similarity", "validate"), default_kind="concept",
    ),
    "cladec": Method(
        schema=_cladec.CladecCheck, run=Lazy("auditor.methods.cladec", "run"), reads=Reads(layers=True),
        findings={"": FindingKind(_cladec.CladecFinding, ("model", "layer", "decoder"), _cladec.compare)},
        family=None, validate=Lazy("auditor.methods.cladec_validate", "validate"),
    ),
}
