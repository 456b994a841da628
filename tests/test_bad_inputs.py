"""Issue 17: a battery of bad and odd inputs, each driven through the real CLI in-process on real files.

For every case: the exit code; stderr holds only `error:` lines (one, where one mistake was made), no traceback
and no "internal error"; the file or YAML key at fault is named; no report is written; a pickle in the way runs
no code. Cases where processing must go on (every image mode a folder can hold) expect exit 0. The test prints
`bad inputs: <n> cases, <k> behave` and fails unless k == n.

Then property-based fuzzing (hypothesis) of the policy loader and the labels reader: any input gives a result or
a UserError, never another exception.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from auditor.cli import main
from auditor.errors import UserError
from auditor.labels import read_labels
from auditor.policy import parse_policy

sys.path.insert(0, str(Path(__file__).parent))
import tinynet  # noqa: E402

MARKER = "pickle-ran.txt"  # a pickle's payload would write this file


class Payload:
    """Unpickling this calls `open(MARKER, 'w')`: code from the file. It must never run."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (self.target, "w"))


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # writes what the case needs into the folder; returns the CLI arguments
    needles: tuple[str, ...]  # what stderr must name (a file, a YAML key path)
    code: int = 2
    one_line: bool = True  # one mistake, one line


# ------------------------------------------------------------------------------------------------ builders


def _policy(edit: Callable[[str], str] = lambda t: t, extra: str = "", command: str = "validate") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "p.yaml").write_text(edit(BASE_TEXT) + extra, encoding="utf-8")
        if command == "run":
            return ["run", str(d / "p.yaml"), "--out", str(d / "out"), "--cache-dir", str(d / "cache"), "--quiet"]
        return ["validate", str(d / "p.yaml")]

    return setup


def _raw(data: bytes) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "p.yaml").write_bytes(data)
        return ["validate", str(d / "p.yaml")]

    return setup


def _own_world(d: Path) -> Path:
    """Replace the shared world symlink with a copy the case may damage."""
    link = d / "world"
    target = link.resolve()
    link.unlink()
    shutil.copytree(target, link)
    return link


def _with_file(rel: str, write: Callable[[Path], None], edit: Callable[[str], str] = lambda t: t, extra: str = "",
               command: str = "validate") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        if rel.startswith("world/"):
            _own_world(d)
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return _policy(edit, extra, command)(d)

    return setup


def _swap(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def _png_bytes(mode_array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(mode_array).save(buf, format="PNG")
    return buf.getvalue()


def _image_in_mode(mode: str) -> Callable[[Path], None]:
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))

    def write(path: Path) -> None:
        if mode == "I;16":
            im = Image.fromarray(gray.astype(np.uint16) * 257)
        elif mode == "I":
            im = Image.fromarray(gray.astype(np.int32) * 257, "I")
        elif mode == "F":
            im = Image.fromarray(gray.astype(np.float32) / 255.0, "F")
        elif mode in ("P", "PA"):
            im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
            im = im.convert(mode) if mode == "PA" else im
        else:
            im = Image.fromarray(rgb).convert(mode)
        im.save(path)

    return write


IMAGE_MODES = {"1": "png", "L": "png", "LA": "png", "P": "png", "PA": "tif", "RGB": "png", "RGBA": "png",
               "CMYK": "tif", "I;16": "png", "I": "tif", "F": "tif"}

TCAV0 = "checks[0]"
INVERT = """  - id: units
    method: invert
    labels: probe/labels.csv
    forbidden: [red]
    min_fraction: 0.1
    require:
      - {model: candidate, max_flagged_units: 0}
"""


def _labels(text: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        probe = d / "probe"
        probe.mkdir()
        sources = sorted((d / "world" / "classes" / "a").iterdir()) + sorted((d / "world" / "classes" / "b").iterdir())
        for i, src in enumerate(sources[:LABELLED]):
            shutil.copy(src, probe / f"{i}.png")
        (probe / "labels.csv").write_text(text, encoding="utf-8")
        return _policy(extra=INVERT)(d)

    return setup


LABELLED = 24  # INVERT needs at least 20 labelled images
GOOD_LABELS = "image,red,blue\n" + "".join(f"{i}.png,{i % 2},{(i // 2) % 2}\n" for i in range(LABELLED))


def _pickle_model(d: Path) -> list[str]:
    with open(d / "evil.pt", "wb") as f:
        pickle.dump(Payload(str(d / MARKER)), f)
    return _policy(_swap("candidate: {path: tiny.pt}", "candidate: {path: evil.pt}"))(d)


def _fixed_size_model(d: Path) -> list[str]:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 16 * 16, 2))
    torch.jit.script(net).save(str(d / "fixed.pt"))
    return _policy(lambda t: t.replace("candidate: {path: tiny.pt}", "candidate: {path: fixed.pt}")
                   .replace("size: 16", "size: 24"))(d)


def _three_logits(d: Path) -> list[str]:
    torch.jit.script(tinynet.TinyNet(classes=3)).save(str(d / "three.pt"))
    return _policy(_swap("candidate: {path: tiny.pt}", "candidate: {path: three.pt}"))(d)


def _results(text: str, command: str = "render") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "results.json").write_text(text)
        if command == "diff":
            return ["diff", str(d / "results.json"), str(d / "results.json")]
        return ["render", str(d / "results.json"), "--out", str(d / "out")]

    return setup


def _run_with(d: Path, out: str = "out", cache: str = "cache") -> list[str]:
    """`auditor run` with --out / --cache-dir relative to the case folder, which holds a plain file `a-file`."""
    _policy()(d)
    (d / "a-file").write_text("x")
    return ["run", str(d / "p.yaml"), "--out", str(d / out), "--cache-dir", str(d / cache)]


def _args(*args: str) -> Callable[[Path], list[str]]:
    return lambda d: [a.replace("{d}", str(d)) for a in args]


def _touch(_rel: str) -> Callable[[Path], None]:
    return lambda p: p.write_text("x")


# ------------------------------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # -- the policy file itself
    Case("policy missing", _args("validate", "{d}/absent.yaml"), ("absent.yaml",)),
    Case("policy is a folder", _args("validate", "{d}/world"), ("world",)),
    Case("empty policy", _raw(b""), ("p.yaml", "mapping")),
    Case("policy is a YAML list", _raw(b"- a\n- b\n"), ("p.yaml", "mapping")),
    Case("YAML syntax error", _raw(b"models: [unclosed\n"), ("p.yaml", "not valid YAML", "line")),
    Case("tab indentation", _raw(b"models:\n\tcandidate: x\n"), ("p.yaml", "not valid YAML")),
    Case("NUL byte", _raw(b"title: a\x00b\n"), ("p.yaml", "not valid YAML")),
    Case("not UTF-8", _raw(b"title: caf\xe9\n"), ("p.yaml", "not UTF-8", "byte offset 10")),
    Case("duplicate top-level key", _policy(extra="checks: []\n"), ("checks: duplicate key", "lines")),
    Case("duplicate nested key", _policy(_swap("severity: critical", "severity: critical\n    severity: minor")),
         ("checks[0].severity: duplicate key",)),
    Case("recursive YAML alias", _raw(b"a: &x [*x]\n"), ("p.yaml",), one_line=False),
    # -- top-level keys
    Case("unknown top-level key", _policy(extra="colour: red\n"), ("colour", "unknown key")),
    Case("internal key set", _policy(extra="root: /\n"), ("root", "unknown key")),
    Case("title is a list", _policy(_swap("title: tiny audit", "title: [a, b]")), ("title",)),
    Case("seed is text", _policy(_swap("seed: 3", "seed: three")), ("seed",)),
    Case("seed is a fraction", _policy(_swap("seed: 3", "seed: 1.5")), ("seed",)),
    Case("models missing", _policy(lambda t: t.replace("models:\n  candidate: {path: tiny.pt}\n  reference: {path: tiny.pt}\n", "")),
         ("models",), one_line=False),
    # -- models
    Case("model without path or factory", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {name: c}")),
         ("models.candidate",)),
    Case("unknown framework", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {path: tiny.pt, framework: tf}")),
         ("models.candidate.framework",)),
    Case("trust_pickle not a bool", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {path: tiny.pt, trust_pickle: maybe}")),
         ("models.candidate.trust_pickle",)),
    Case("model file missing", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {path: gone.pt}")),
         ("models.candidate", "gone.pt")),
    Case("model file is text", _with_file("junk.pt", _touch("junk.pt"), _swap("candidate: {path: tiny.pt}", "candidate: {path: junk.pt}")),
         ("models.candidate", "junk.pt")),
    Case("model is a pickle with a payload", _pickle_model, ("models.candidate", "evil.pt", "trust_pickle")),
    Case("ONNX file that is not ONNX", _with_file("m.onnx", _touch("m.onnx"), _swap("candidate: {path: tiny.pt}", "candidate: {path: m.onnx}")),
         ("models.candidate", "m.onnx")),
    Case("factory without a colon", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {factory: nocolon}")),
         ("models.candidate", "nocolon")),
    Case("factory module missing", _policy(_swap("candidate: {path: tiny.pt}", "candidate: {factory: 'no_such_mod:make'}")),
         ("models.candidate", "no_such_mod")),
    Case("model built for another size", _fixed_size_model, ("models.candidate", "fixed.pt", "16x16")),
    Case("model with more logits than names", _three_logits, ("data.classes.names", "3 logits")),
    # -- preprocessing
    Case("size 0", _policy(_swap("size: 16", "size: 0")), ("preprocessing.size",)),
    Case("size negative", _policy(_swap("size: 16", "size: -4")), ("preprocessing.size",)),
    Case("size text", _policy(_swap("size: 16", "size: big")), ("preprocessing.size",)),
    Case("size three sides", _policy(_swap("size: 16", "size: [16, 16, 3]")), ("preprocessing.size",)),
    Case("size huge", _policy(_swap("size: 16", "size: 100000")), ("preprocessing.size",)),
    Case("mean two values", _policy(_swap("mean: [0.5, 0.5, 0.5]", "mean: [0.5, 0.5]")), ("preprocessing.mean",)),
    Case("mean NaN", _policy(_swap("mean: [0.5, 0.5, 0.5]", "mean: [.nan, 0.5, 0.5]")), ("preprocessing.mean",)),
    Case("std zero", _policy(_swap("std: [0.25, 0.25, 0.25]", "std: [0.25, 0, 0.25]")), ("preprocessing.std",)),
    Case("std negative", _policy(_swap("std: [0.25, 0.25, 0.25]", "std: [-1, 1, 1]")), ("preprocessing.std",)),
    Case("channel order unknown", _policy(_swap("std: [0.25, 0.25, 0.25]}", "std: [0.25, 0.25, 0.25], channel_order: RBG}")),
         ("preprocessing.channel_order",)),
    # -- data and class names
    Case("data missing", _policy(lambda t: t.split("data:")[0] + "layers:" + t.split("layers:")[1]), ("data",)),
    Case("classes folder key missing", _policy(_swap("classes: {folder: world/classes, names: [a, b]}", "classes: {names: [a, b]}")),
         ("data.classes.folder",)),
    Case("names empty", _policy(_swap("names: [a, b]", "names: []")), ("data.classes.names",)),
    Case("names duplicated", _policy(_swap("names: [a, b]", "names: [a, a]")), ("data.classes.names", "unique")),
    Case("more names than logits", _policy(_swap("names: [a, b]", "names: [a, b, c]")), ("data.classes.names", "2 logits")),
    Case("named logit out of range", _policy(_swap("names: [a, b]", "names: {0: a, 9: b}")), ("data.classes.names", "logit 9")),
    Case("negative logit key", _policy(_swap("names: [a, b]", "names: {-1: a, 0: b}")), ("data.classes.names",)),
    Case("names a number", _policy(_swap("names: [a, b]", "names: 7")), ("data.classes.names",)),
    Case("name with a slash", _policy(_swap("names: [a, b]", "names: [a, ../b]")), ("data.classes.names",)),
    Case("names file missing", _policy(_swap("names: [a, b]", "names: nowhere.txt")), ("data.classes.names", "nowhere.txt")),
    Case("names file not UTF-8", _with_file("n.txt", lambda p: p.write_bytes(b"a\n\xff\n"), _swap("names: [a, b]", "names: n.txt")),
         ("data.classes.names", "n.txt", "UTF-8")),
    Case("class folder missing", _with_file("world/x", lambda p: shutil.rmtree(p.parent / "classes" / "a")),
         ("data.classes (a)", "classes/a")),
    Case("class folder empty", _with_file("world/x", lambda p: [f.unlink() for f in (p.parent / "classes" / "a").iterdir()]),
         ("data.classes (a)", "no images")),
    Case("concepts key missing", _policy(_swap("  concepts: {folder: world/concepts}\n", "")), (TCAV0, "data.concepts")),
    Case("random key missing", _policy(_swap("  random: {folder: world/random}\n", "")), (TCAV0, "data.random")),
    Case("concept folder missing", _policy(_swap("concepts: [red, blue]", "concepts: [red, green]")),
         ("data.concepts (green)", "green")),
    Case("concept with one image", _with_file("world/x", lambda p: [f.unlink() for f in sorted((p.parent / "concepts" / "blue").iterdir())[1:]]),
         # two lines: the CAV split's minimum and the exchangeability test's set_size (both name the concept)
         ("data.concepts (blue)", "at least 3"), one_line=False),
    Case("random pool folder missing", _policy(_swap("random: {folder: world/random}", "random: {folder: world/nope}")),
         ("data.random", "nope")),
    # -- images
    Case("corrupt PNG", _with_file("world/concepts/red/bad.png", lambda p: p.write_bytes(b"\x89PNG garbage")), ("bad.png",)),
    Case("truncated PNG", _with_file("world/concepts/red/half.png",
                                     lambda p: p.write_bytes(_png_bytes(np.zeros((64, 64, 3), np.uint8) + 7)[:80])), ("half.png",)),
    Case("zero-byte image", _with_file("world/concepts/red/empty.png", lambda p: p.write_bytes(b"")), ("empty.png",)),
    Case("text file named .jpg", _with_file("world/random/notes.jpg", lambda p: p.write_text("hello")), ("notes.jpg",)),
    Case("32-bit image out of 16-bit range", _with_file("world/concepts/red/wide.tif",
         lambda p: Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(p)), ("wide.tif", "65535")),
    Case("float image out of range", _with_file("world/concepts/red/hot.tif",
         lambda p: Image.fromarray(np.full((8, 8), 300.0, np.float32), "F").save(p)), ("hot.tif",)),
    *[
        Case(f"image mode {mode} decodes (processing goes on)",
             _with_file(f"world/concepts/red/mode.{ext}", _image_in_mode(mode)), (), code=0)
        for mode, ext in IMAGE_MODES.items()
    ],
    # -- layers
    Case("layers for an unknown model", _policy(_swap("layers:\n", "layers:\n  third: [features.1]\n")), ("layers.third",)),
    Case("unknown layer name", _policy(_swap("candidate: ['features.1', 'features.4']", "candidate: ['features.1', 'features.44']")),
         ("layers.candidate[1]", "features.44")),
    Case("layers not a list", _policy(_swap("candidate: ['features.1', 'features.4']", "candidate: features.1")),
         ("layers.candidate",)),
    # -- checks
    Case("checks empty", _policy(lambda t: t.split("checks:")[0] + "checks: []\n"), ("checks",)),
    Case("checks missing", _policy(lambda t: t.split("checks:")[0]), ("checks",)),
    Case("unknown method", _policy(_swap("method: tcav", "method: tcavv")), (TCAV0, "unknown method")),
    Case("misspelt check key", _policy(_swap("severity:", "severty:")), ("checks[0].severty", "unknown key")),
    Case("duplicate check id", _policy(extra="  - {id: tcav-red, method: tcav, classes: [a], concepts: [red], random_sets: 4, set_size: 12}\n"),
         ("checks[1].id", "twice")),
    Case("severity unknown", _policy(_swap("severity: critical", "severity: urgent")), ("checks[0].severity",)),
    Case("class not in names", _policy(_swap("classes: [a]", "classes: [zebra]")), ("checks[0].classes[0]", "zebra"), one_line=False),
    Case("random_sets below 2", _policy(_swap("random_sets: 4", "random_sets: 1")), ("checks[0].random_sets",)),
    Case("random_sets text", _policy(_swap("random_sets: 4", "random_sets: many")), ("checks[0].random_sets",)),
    Case("set_size below 10", _policy(_swap("set_size: 12", "set_size: 5")), ("checks[0].set_size",)),
    Case("alpha above 1", _policy(_swap("set_size: 12", "set_size: 12\n    alpha: 1.5")), ("checks[0].alpha",)),
    Case("alpha zero", _policy(_swap("set_size: 12", "set_size: 12\n    alpha: 0")), ("checks[0].alpha",)),
    Case("cav kind unknown", _policy(_swap("set_size: 12", "set_size: 12\n    cav: logistik")), ("checks[0].cav",)),
    Case("space unknown", _policy(_swap("set_size: 12", "set_size: 12\n    space: global")), ("checks[0].space",)),
    Case("requirement class unknown", _policy(_swap("class: a,", "class: b,")), ("checks[0].require[0].class",)),
    Case("requirement concept unknown", _policy(_swap("concept: red,", "concept: green,")), ("checks[0].require[0].concept", "green")),
    Case("requirement says nothing", _policy(_swap(", significant: false}", "}")), ("checks[0].require[0]",)),
    Case("requirement score above 1", _policy(_swap("significant: false}", "max_score: 2}")), ("checks[0].require[0].max_score",)),
    Case("requirement for an unknown model", _policy(_swap("{model: candidate,", "{model: champion,")),
         ("checks[0].require[0].model", "champion")),
    Case("artifact image missing", _policy(extra="  - {id: p, method: artifact_probe, artifact: {image: none.png}}\n"),
         ("checks[1].artifact.image", "none.png")),
    Case("artifact is not an image", _with_file("mark.png", _touch("mark.png"),
         extra="  - {id: p, method: artifact_probe, artifact: {image: mark.png}}\n"), ("checks[1].artifact.image", "mark.png")),
    Case("artifact threshold below 0.5", _policy(extra="  - {id: p, method: artifact_probe, artifact: {image: x.png}, threshold: 0.4}\n"),
         ("checks[1].threshold",)),
    Case("artifact position unknown", _policy(extra="  - {id: p, method: artifact_probe, artifact: {image: x.png, position: middle}}\n"),
         ("checks[1].artifact.position",)),
    Case("sacv on a dense layer", _policy(extra="  - {id: s, method: sacv, classes: [a], concepts: [red], random_sets: 2, set_size: 10, "
                                                "layers: {candidate: [fc], reference: [features.4]}}\n"),
         ("checks[1].layers.candidate[0]", "convolutional")),
    # -- INVERT labels CSV
    Case("valid labels CSV (processing goes on)", _labels(GOOD_LABELS), (), code=0),
    Case("labels CSV missing", _policy(extra=INVERT), ("checks[1]", "labels.csv")),
    Case("labels value not 0/1", _labels(GOOD_LABELS.replace("\n1.png,1,0\n", "\n1.png,yes,0\n")), ("labels.csv", "row 3", "'red'")),
    Case("labels row too short", _labels(GOOD_LABELS.replace("\n2.png,0,1\n", "\n2.png,0\n")), ("labels.csv", "row 4")),
    Case("labels image missing", _labels(GOOD_LABELS.replace("\n3.png", "\n33.png")), ("labels.csv", "33.png")),
    Case("labels duplicated column", _labels(GOOD_LABELS.replace("image,red,blue", "image,red,red")), ("labels.csv", "twice")),
    Case("labels forbidden column absent", _labels(GOOD_LABELS.replace("image,red,blue", "image,green,blue")), ("checks[1]", "red")),
    Case("labels no rows", _labels("image,red,blue\n"), ("labels.csv", "no image rows")),
    # -- command line
    Case("--out is under a file", lambda d: _run_with(d, out="a-file/out"), ("--out", "a-file")),
    Case("--cache-dir is a file", lambda d: _run_with(d, cache="a-file"), ("--cache-dir", "a-file")),
    Case("layers: model missing", _args("layers", "{d}/gone.onnx"), ("gone.onnx",)),
    Case("layers: --size 0", _args("layers", "{d}/tiny.pt", "--size", "0"), ("--size",)),
    Case("render: results missing", _args("render", "{d}/none.json"), ("none.json",)),
    Case("render: results not JSON", _results("{not json"), ("results.json", "not valid JSON")),
    Case("render: results of another tool", _results(json.dumps({"hello": 1})), ("results.json",)),
    Case("diff: results not JSON", _results("[1, 2", command="diff"), ("results.json",)),
    Case("fail-on unknown", _args("run", "{d}/p.yaml", "--fail-on", "sometimes"), ("--fail-on",)),
]

BASE_TEXT = ""  # set by the fixture from the tiny world's policy


def _behaves(case: Case, d: Path) -> list[str]:
    """What is wrong with how the CLI handled `case` (empty: it behaved)."""
    args = case.setup(d)
    res = CliRunner().invoke(main, args)
    err = res.stderr
    problems = []
    if res.exit_code != case.code:
        problems.append(f"exit {res.exit_code}, expected {case.code}")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        problems.append(f"raised {type(res.exception).__name__}: {res.exception}")
    if "Traceback" in err or "internal error" in err:
        problems.append("traceback or internal error on stderr")
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        # click's own usage errors (a bad option value) print "Usage:" and "Error:" lines; ours print "error:"
        ours = [line for line in lines if line.startswith("error:")]
        usage = any(line.startswith("Error:") for line in lines)
        if not ours and not usage:
            problems.append("no error line")
        if ours and len(ours) != len(lines):
            problems.append("lines other than error: lines")
        if case.one_line and len(ours) > 1:
            problems.append(f"{len(ours)} error lines for one mistake")
        for n in case.needles:
            if n not in err:
                problems.append(f"does not name {n!r}")
    if case.code != 0 and (d / "out" / "results.json").exists():
        problems.append("a report was written")
    if (d / MARKER).exists():
        problems.append("code from a pickle ran")
    return [f"{case.name}: {p}" + (f" | stderr: {err.strip()[:1200]}" if p else "") for p in problems]


@pytest.fixture(scope="module")
def base_text(tiny_world) -> str:
    return tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"})


def test_bad_inputs_battery(tiny_world, base_text, tmp_path, capsys):
    global BASE_TEXT
    BASE_TEXT = base_text
    failures: list[str] = []
    behave = 0
    for i, case in enumerate(CASES):
        d = tmp_path / f"case{i:03d}"
        d.mkdir()
        (d / "world").symlink_to(tiny_world.root / "world")
        shutil.copy(tiny_world.script, d / "tiny.pt")
        wrong = _behaves(case, d)
        failures.extend(wrong)
        behave += not wrong
    with capsys.disabled():
        print(f"\nbad inputs: {len(CASES)} cases, {behave} behave")
    assert len(CASES) >= 60
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8))
_keys = st.sampled_from(["title", "seed", "models", "data", "layers", "checks", "candidate", "path", "classes",
                         "names", "folder", "size", "mean", "id", "method", "tcav", "require", "concepts", "x"])
_yamlish = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_policy_loader_any_text(text):
    try:
        parse_policy(text, "p.yaml", Path("."))
    except UserError:
        pass


@FUZZ
@given(_yamlish)
def test_fuzz_policy_loader_any_structure(value):
    import yaml

    try:
        parse_policy(yaml.safe_dump(value), "p.yaml", Path("."))
    except UserError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_policy_loader_any_bytes(tmp_path_factory, raw):
    from auditor.policy import load_policy

    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_bytes(raw)
    try:
        load_policy(path)
    except UserError:
        pass


_cells = st.text(alphabet=st.sampled_from(list("01,ab.png \"\n\r\t;x\\é")), max_size=120)


@FUZZ
@given(_cells)
def test_fuzz_labels_reader(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("labels")
    (d / "a.png").write_bytes(b"")
    (d / "labels.csv").write_text(text, encoding="utf-8")
    try:
        labels, problems = read_labels(d / "labels.csv")
    except UserError:
        return
    assert labels is not None or problems


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a parsed YAML document (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


REFERENCE = Path(__file__).resolve().parents[1] / "policies" / "reference.yaml"


@FUZZ
@given(st.data())
def test_fuzz_policy_loader_one_value_of_a_valid_policy_replaced(data):
    """The reference policy with the value at one key path replaced by anything: deep validators see odd types."""
    import copy

    import yaml

    doc = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(doc)
    node = mutated
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = data.draw(_yamlish)
    try:
        parse_policy(yaml.safe_dump(mutated), "p.yaml", REFERENCE.parent)
    except UserError as e:
        assert str(e).strip(), path
