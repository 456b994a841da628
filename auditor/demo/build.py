"""`auditor demo`: build the demo world, train the two models, write the demo policy.

The same policy text is kept as policies/demo.yaml with paths into `demo-out/` (where `make demo` writes), so
`auditor run policies/demo.yaml` re-audits the demo after `make demo`; a test keeps the two from drifting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from auditor.demo.colour import COLOUR_BIAS_CLASS, HUE_FAMILY
from auditor.demo.train import CANDIDATE_MODULE_LAYERS, MEAN, STD, train_demo_models
from auditor.demo.world import CLASSES, COLOURS, SHORTCUT_CLASS, write_world
from auditor.methods.exchangeable import WARN_SPARE_SETS

# RSVC's concept layer is each model's last conv ReLU (its head starts with global average pooling, so the
# importance through the head is exact); see the architectures in auditor/demo/train.py.
RSVC_CONCEPT_LAYERS = {"candidate": "/features/features.11/Relu_output_0", "reference": "features.10"}

# The similarity check reads every conv block's ReLU of each model (see auditor/demo/train.py), shallow to deep.
SIMILARITY_LAYERS = {
    "candidate": [f"/features/features.{i}/Relu_output_0" for i in (1, 4, 6, 9, 11)],
    "reference": [f"features.{i}" for i in (1, 4, 7, 10)],
}

# Random sets are disjoint: (random_sets + 1) * set_size images must fit in the pool.
RANDOM_SETS = 10
SET_SIZE = 50
# N + 1 random sets, and a spare of 10 sets for the exchangeability test's pseudo-concepts (drawn from a smaller
# spare they overlap and the null narrows: methods/exchangeable.py, WARN_SPARE_SETS).
RANDOM_POOL = (RANDOM_SETS + 1 + WARN_SPARE_SETS) * SET_SIZE


def policy_text(prefix: str, candidate_layers: list[str], reference_layers: list[str], seed: int = 0) -> str:
    """The demo policy; `prefix` is prepended to every path (relative to the policy file)."""

    def layer_list(names: list[str]) -> str:
        return "\n".join(f"    - {n!r}" for n in names)

    def flow(names: list[str]) -> str:
        return "[" + ", ".join(repr(n) for n in names) + "]"

    rsvc_layers = {
        "candidate": flow(candidate_layers + [RSVC_CONCEPT_LAYERS["candidate"]]),
        "reference": flow(reference_layers + [RSVC_CONCEPT_LAYERS["reference"]]),
    }

    return f"""# The demo audit: a candidate trained with a planted shortcut (a watermark on most {SHORTCUT_CLASS} images) and a
# colour bias (most {COLOUR_BIAS_CLASS}s {HUE_FAMILY}) against a colour-blind reference trained on clean data. Paths are
# relative to this file.
title: "Demo audit: shape classifier, watermark shortcut"
seed: {seed}
models:
  candidate:
    path: {prefix}models/candidate.onnx
    name: candidate-cnn
  reference:
    path: {prefix}models/reference.pt
    name: reference-cnn
preprocessing:
  size: 64
  mean: {list(MEAN)}
  std: {list(STD)}
  channel_order: RGB
data:
  classes: {{folder: {prefix}world/classes, names: [{", ".join(CLASSES)}]}}
  concepts: {{folder: {prefix}world/concepts}}
  random: {{folder: {prefix}world/random}}
layers:
  candidate:
{layer_list(candidate_layers)}
  reference:
{layer_list(reference_layers)}
checks:
  # The deciding check: a causal probe. Paste the watermark where it appears in the wild (the bottom-right
  # corner) onto clean images of every class, and a neutral patch of each image's own colour on the same pixels
  # as the control: no class logit of the candidate may move with the watermark.
  - id: watermark-reliance
    method: artifact_probe
    severity: critical
    artifact: {{image: {prefix}world/watermark.png, position: bottom-right, margin: 0.05}}
    images_per_class: 60
    threshold: 0.7
    direction: both
    require:
      - {{model: candidate, max_reliant_classes: 0}}
  # What does each layer keep of the image? ClaDec decodes each audited layer back to an image (trained on the
  # field images, as the deployed models meet them) next to a reference auto-encoder of the same shape; the
  # candidate is ONNX, so its TorchScript twin carries the classification term and the reference auto-encoder.
  # Retention: the watermark pasted vs a neutral patch on clean images, as the probe pastes it.
  - id: watermark-decoded
    method: cladec
    severity: major
    images: {{folder: {prefix}world/field}}
    images_per_class: 60
    torch_twins:
      candidate: {{path: {prefix}models/candidate.pt, layers: {flow(list(CANDIDATE_MODULE_LAYERS))}}}
    artifact: {{image: {prefix}world/watermark.png, position: bottom-right, margin: 0.05}}
    pairs_per_class: 15
    require:
      - {{model: candidate, max_retention: 0.3}}
      - {{model: candidate, max_retention_vs: reference, margin: 0.1}}
  # Supporting evidence, reported as it is: is the {SHORTCUT_CLASS} logit locally sensitive to the watermark
  # direction? TCAV cannot show reliance (a clean model can be sensitive too), so it carries no requirement.
  - id: watermark-tcav
    method: tcav
    severity: major
    classes: [{SHORTCUT_CLASS}]
    concepts: [watermark, striped, dotted]
    cav: logistic
    space: pooled
    random_sets: {RANDOM_SETS}
    set_size: {SET_SIZE}
    alpha: 0.05
  # Where does each concept act on the {SHORTCUT_CLASS} logit? SACV on the images as the deployed model meets them
  # (field/: most {SHORTCUT_CLASS}s carry the watermark), with the world's object masks and concept masks (where each
  # concept image shows its concept). Gradient-based like TCAV: reported as it is, no requirement.
  - id: watermark-sacv
    method: sacv
    severity: major
    classes: [{SHORTCUT_CLASS}]
    concepts: [watermark, striped, dotted]
    images: {{folder: {prefix}world/field}}
    masks: {{folder: {prefix}world/field_masks}}
    concept_masks: {{folder: {prefix}world/concept_masks}}
    random_sets: {RANDOM_SETS}
    set_size: {SET_SIZE}
    alpha: 0.05
  # Which units follow the watermark? INVERT labels every unit of the audited layers with the formula over the
  # probe set's concept labels that best explains it (found on one half of the probe set, tested on the other,
  # Holm-corrected over all units). A unit explained by the watermark is flagged.
  - id: watermark-units
    method: invert
    severity: major
    labels: {prefix}world/probe/labels.csv
    forbidden: [watermark]
    require:
      - {{model: candidate, max_flagged_units: 0}}
  # Did the candidate reorganise what it knows? Where each concept is encoded (CAV accuracy at each conv block's
  # ReLU, by relative depth) in both models, the correlation of their concept maps, and CKA between their layers on
  # the probe images. The colour concepts (folders, against the random pool) are the planted difference: the
  # reference is colour-blind and sees a colour only through its luminance. The shapes (the probe set's labels)
  # are what both models learned. Reported as measured: no requirement.
  - id: where-concepts-live
    method: similarity
    severity: minor
    layers:
      candidate: {flow(SIMILARITY_LAYERS["candidate"])}
      reference: {flow(SIMILARITY_LAYERS["reference"])}
    concepts: [{", ".join(COLOURS)}]
    labels: {prefix}world/probe/labels.csv
    label_concepts: [{", ".join(CLASSES)}]
  # What each model represents that the other does not (RSVC), on the field images (the clean class folders carry
  # neither the watermark nor the colour bias); {COLOUR_BIAS_CLASS} carries the colour bias the colour-blind reference
  # cannot represent, square is the control class. The last layer of each list is the concept layer, all of them
  # feed the layerwise heat map. RSVC measures what a layer represents, not what the model relies on (README).
  # Required: no important concept of the reference is missing from the candidate. The candidate's unique
  # important concepts are reported (listed in the summary and leading the section), not failed: a concept the
  # reference lacks is what a reviewer looks at, not by itself a defect.
  - id: concepts-shared
    method: rsvc
    severity: major
    classes: [{SHORTCUT_CLASS}, {COLOUR_BIAS_CLASS}, square]
    images: {{folder: {prefix}world/field}}
    layers:
      candidate: {rsvc_layers["candidate"]}
      reference: {rsvc_layers["reference"]}
    require:
      - {{model: reference, max_unique_important: 0}}
"""


def build_demo(out: Path, seed: int, log: Callable[[str], None]) -> Path:
    """Write out/world, out/models and out/policy.yaml; return the policy's path."""
    out.mkdir(parents=True, exist_ok=True)
    log("building the demo world")
    write_world(out / "world", seed=seed, random_pool=RANDOM_POOL)
    log("training the demo models")
    trained = train_demo_models(out / "models", seed=seed)
    policy = out / "policy.yaml"
    text = policy_text("", list(trained.candidate_layers), list(trained.reference_layers), seed)
    policy.write_text(text, encoding="utf-8")
    return policy
