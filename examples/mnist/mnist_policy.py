"""The worked example's policy: did converting the pretrained MNIST CNN to ONNX change what it relies on?

Candidate: the ONNX export (what would be deployed); reference: the TorchScript export of the same weights. Every
requirement names `model: all`: a reviewer asks the same of both files, so a conversion that changed what the
network relies on shows as verdicts that differ between the two models. The battery is sized to run in a few
minutes on 2 CPU cores (README, "Worked example").
"""

from __future__ import annotations

from string import Template

#: TCAV's random sets: (random_sets + 1 + 10 spare) x set_size pool images let the exchangeability test draw its
#: pseudo-concepts from disjoint sets (auditor/demo/build.py, RANDOM_POOL). set_size 100: the batched Newton
#: solver of the test fits a CAV only when its training rows (2/3 of 2 x set_size) outnumber the layer's channels.
#: Measured drafts: set_size 30 at conv_layers.4 and .7 (2,000 pseudo-concepts) sent every pseudo-concept x 10 runs
#: x 2 models through sklearn one at a time (not finished after 6 CPU minutes); set_size 100 at conv_layers.7
#: (128 channels, 133 training rows: nearly separable, Newton needs many damped steps) had not finished one model
#: in 10 minutes at load 7. At conv_layers.4 (64 channels) 133 rows are twice the channels.
RANDOM_SETS = 10
SET_SIZE = 100
RANDOM_POOL = (RANDOM_SETS + 1 + 10) * SET_SIZE
CONCEPT_IMAGES = SET_SIZE
#: The similarity check's CAVs are few (runs x concepts x layers x models) and fitted one by one: small sets do.
SIMILARITY_SET_SIZE = 30


def _flow(names: list[str]) -> str:
    return "[" + ", ".join(repr(n) for n in names) + "]"


#: The policy; ${...} are filled by `policy_text` (string.Template: YAML's braces stay as they are).
POLICY = Template("""# Worked example: a pretrained MNIST CNN from PyPI (digit-recognizer-py 0.1.0, MIT), converted to ONNX.
# The question: did the conversion change what the model relies on? The candidate is the ONNX export, the
# reference the TorchScript export of the same weights. Both wrap the shipped one-channel CNN in a fixed
# RGB-to-luminance stage (0.299 R + 0.587 G + 0.114 B, ITU-R 601), since auditor feeds RGB images; the images are
# grey, so the stage passes them through unchanged. Every requirement names `model: all`: the two files must get
# the same verdicts. Built by examples/mnist/build.py; paths are relative to this file.
title: "MNIST CNN (digit-recognizer-py 0.1.0, RGB-to-luminance wrapper): ONNX export vs TorchScript"
seed: ${seed}
models:
  candidate:
    path: models/digits.onnx
    name: digits-onnx
  reference:
    path: models/digits.pt
    name: digits-torchscript
preprocessing:                  # MNIST's: the package's own DigitRecognizer normalises so
  size: 28
  mean: [0.1307, 0.1307, 0.1307]
  std: [0.3081, 0.3081, 0.3081]
  channel_order: RGB
data:
  classes: {folder: world/classes, names: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']}
  concepts: {folder: world/concepts}
  random: {folder: world/random}
layers:                         # the second and third conv blocks' ReLUs (64x14x14, 128x7x7)
  candidate: ${conv_candidate}
  reference: ${conv_reference}
checks:
  # A small white cross pasted near the bottom-right corner (where MNIST digits never are) against a neutral
  # patch on the same pixels: no digit logit may move with it.
  - id: glyph-reliance
    method: artifact_probe
    severity: critical
    artifact: {image: world/glyph.png, position: bottom-right, margin: 0.04}
    images_per_class: 40
    threshold: 0.7
    direction: both
    require:
      - {model: all, max_reliant_classes: 0}
  # Stroke features drawn with numpy (examples/mnist/mnist_world.py): is the 0 logit sensitive to closed loops
  # and the 1 logit to vertical strokes at the second conv block, in both files alike? One layer, two classes and
  # three concepts keep the Holm family (12 cells) and so the pseudo-concepts (959) small.
  - id: strokes-tcav
    method: tcav
    severity: major
    classes: ['0', '1']
    concepts: [closed_loop, vertical_stroke, horizontal_bar]
    layers:
      candidate: [${tcav_candidate}]
      reference: [${tcav_reference}]
    random_sets: ${random_sets}
    set_size: ${set_size}
    class_images: 40
    alpha: 0.05
    require:
      - {model: all, concept: closed_loop, class: '0', significant: true}
      - {model: all, concept: vertical_stroke, class: '1', significant: true}
  # Which units follow the pasted glyph? INVERT on the probe set (real digits, the glyph on half of them).
  - id: glyph-units
    method: invert
    severity: major
    labels: world/probe/labels.csv
    forbidden: [glyph]
    formula_length: 2
    require:
      - {model: all, max_flagged_units: 0}
  # What each file represents that the other does not (RSVC) on 0s and 7s; the concept layer is the last conv
  # ReLU (non-negative, as the NMF needs). A conversion that lost or added a concept fails it.
  - id: concepts-shared
    method: rsvc
    severity: major
    classes: ['0', '7']
    layers:
      candidate: ${conv_candidate}
      reference: ${conv_reference}
    concepts: 6
    extraction_images: 30
    evaluation_images: 30
    patch: 0.5
    stride: 0.5
    ig_steps: 16
    require:
      - {model: all, max_unique_important: 0}
  # Where each concept lives (CAV accuracy by relative depth) and CKA between the layers, on the probe set.
  # The same weights: every layer must match its twin (CKA at matched depth 0.99 or more).
  - id: layers-alike
    method: similarity
    severity: minor
    layers:
      candidate: ${all_candidate}
      reference: ${all_reference}
    concepts: [closed_loop, vertical_stroke, horizontal_bar]
    labels: world/probe/labels.csv
    label_concepts: [glyph, d0, d1, d7]
    cka_images: 300
    set_size: ${similarity_set_size}
    runs: 3
    require:
      - {min_cka_at_matched_depth: 0.99, variant: linear}
      - {concept: closed_loop, max_depth_shift: 0.0}
""")


def policy_text(onnx_layers: list[str], torch_layers: list[str], seed: int = 0) -> str:
    """The policy, paths relative to the folder it is written to. `*_layers`: the four ReLU outputs of the CNN
    (conv 32x28x28, 64x14x14, 128x7x7; fc 256) in each format's names, index-aligned."""
    return POLICY.substitute(
        seed=seed,
        conv_candidate=_flow(onnx_layers[1:3]),
        conv_reference=_flow(torch_layers[1:3]),
        tcav_candidate=repr(onnx_layers[1]),
        tcav_reference=repr(torch_layers[1]),
        all_candidate=_flow(onnx_layers),
        all_reference=_flow(torch_layers),
        random_sets=RANDOM_SETS,
        set_size=SET_SIZE,
        similarity_set_size=SIMILARITY_SET_SIZE,
    )
