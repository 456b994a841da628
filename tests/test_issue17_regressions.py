"""Issue 17, "Bad input never gives a wrong report": one regression test per case, named after it.

Each drives the real CLI in-process (click's CliRunner) or the real function on real files; the five silently
wrong cases (1-5) each failed on the code before the fix.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from auditor import data, pipeline
from auditor.activations import Store
from auditor.cli import main
from auditor.methods import invert as invert_method
from auditor.methods.invert_search import UnitExplanation, combine, literal
from auditor.models import load_model
from auditor.policy import PolicyError, load_policy, parse_policy

sys.path.insert(0, str(Path(__file__).parent))
import tinynet  # noqa: E402

PRE = data.Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def user_error(args: tuple[str, ...], *needles: str) -> list[str]:
    """Asserts exit 2 with `error:` lines only (no traceback) containing every needle; returns the lines."""
    code, _out, err = cli(*args)
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("error:") for line in lines), err
    for n in needles:
        assert any(n in line for line in lines), (n, err)
    return lines


@pytest.fixture
def policy_dir(tiny_world, tmp_path: Path) -> Path:
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    return tmp_path


def _text(tiny_world) -> str:
    return tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"})


# ----------------------------------------------------------------------------------------- 1. duplicate keys


def test_case01_duplicate_top_level_key_is_rejected_with_both_lines(tiny_world, policy_dir):
    text = _text(tiny_world)
    second = "checks:\n  - {id: other, method: tcav, classes: [b], concepts: [blue], random_sets: 2, set_size: 10}\n"
    p = policy_dir / "p.yaml"
    p.write_text(text + second)
    first_line = text.splitlines().index("checks:") + 1
    last_line = len(text.splitlines()) + 1
    lines = user_error(("validate", str(p)), "checks: duplicate key", f"lines {first_line} and {last_line}")
    assert len(lines) == 1


def test_case01_duplicate_key_at_any_depth_names_its_path():
    text = "models:\n  candidate: {path: a.pt, path: b.pt}\nchecks:\n  - id: x\n    require:\n      - {model: a, model: b}\n"
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml", Path("."))
    assert e.value.problems == [
        "models.candidate.path: duplicate key (line 2); keep one",
        "checks[0].require[0].model: duplicate key (line 6); keep one",
    ]


# ------------------------------------------------------------------------------------------ 2. class names


def _three_logit_model(d: Path) -> None:
    torch.jit.script(tinynet.TinyNet(classes=3)).save(str(d / "three.pt"))


def test_case02_fewer_names_than_logits_is_a_validate_error(tiny_world, policy_dir):
    _three_logit_model(policy_dir)
    p = policy_dir / "p.yaml"
    p.write_text(tiny_world.policy_text({"candidate": "three.pt", "reference": "tiny.pt"}))
    lines = user_error(("validate", str(p)), "data.classes.names", "2 names", "'candidate'", "3 logits")
    assert len(lines) == 1


def test_case02_more_names_than_logits_is_a_validate_error_not_an_index_error(tiny_world, policy_dir):
    p = policy_dir / "p.yaml"
    p.write_text(_text(tiny_world).replace("names: [a, b]", "names: [a, b, c]"))
    user_error(("validate", str(p)), "data.classes.names", "3 names", "2 logits")
    code, _o, err = cli("run", str(p), "--out", str(policy_dir / "out"), "--cache-dir", str(policy_dir / "c"))
    assert code == 2 and "IndexError" not in err
    assert not (policy_dir / "out" / "results.json").exists()


def test_case02_one_class_of_a_model_by_logit_index(tiny_world, policy_dir):
    """`names: {1: b}` audits logit 1 of a two-logit model; `index` gives the logit, not the list position."""
    p = policy_dir / "p.yaml"
    p.write_text(_text(tiny_world).replace("names: [a, b]", "names: {1: b}").replace("classes: [a]", "classes: [b]")
                 .replace("class: a,", "class: b,"))
    policy = load_policy(p)
    names = policy.data.classes.names
    assert list(names) == ["b"] and names.index("b") == 1 and not names.complete
    code, _o, err = cli("validate", str(p))
    assert code == 0, err
    p.write_text(_text(tiny_world).replace("names: [a, b]", "names: {7: b}").replace("classes: [a]", "classes: [b]")
                 .replace("class: a,", "class: b,"))
    user_error(("validate", str(p)), "data.classes.names", "logit 7", "2 logits")


def test_case02_names_file(tiny_world, policy_dir):
    (policy_dir / "classes.txt").write_text("a\nb\n")
    p = policy_dir / "p.yaml"
    p.write_text(_text(tiny_world).replace("names: [a, b]", "names: classes.txt"))
    assert list(load_policy(p).data.classes.names) == ["a", "b"]
    (policy_dir / "classes.txt").write_text("a\n\nb\n")
    user_error(("validate", str(p)), "data.classes.names", "classes.txt")


# ------------------------------------------------------------------------------------- 3. image bit depths


def _reference_gray(h: int = 8, w: int = 8) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 4 % 256).astype(np.uint8)


def test_case03_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    ref = _reference_gray()
    wide = ref.astype(np.uint16) * 257  # the same picture at 16 bits
    Image.fromarray(wide).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as im:
        assert im.mode.startswith("I")
    got = data.read_rgb(tmp_path / "x16.png", (8, 8))
    assert np.array_equal(got[..., 0], ref), (got.mean(), ref.mean())


# Every mode a user's folder can hold, saved in a format that keeps it, with how it is made from an RGB picture.
MODES = {
    "1": "png", "L": "png", "LA": "png", "P": "png", "PA": "tif", "RGB": "png", "RGBA": "png", "CMYK": "tif",
    "I;16": "png", "I": "tif", "F": "tif",
}


def _saved_in_mode(rgb: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Writes `rgb` in `mode`; returns the (H, W, 3) uint8 picture a correct decoder must give back."""
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "1":
        im = Image.fromarray(gray).convert("1")
        expected = np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)
    elif mode in ("L", "LA"):
        im = Image.fromarray(gray).convert(mode)
        expected = np.repeat(gray[..., None], 3, axis=2)
    elif mode in ("P", "PA"):
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        expected = np.asarray(im.convert("RGB"))
        im = im.convert(mode) if mode == "PA" else im
    elif mode in ("RGB", "RGBA", "CMYK"):
        im = Image.fromarray(rgb).convert(mode)
        expected = np.asarray(im.convert("RGB")) if mode == "CMYK" else rgb
    elif mode == "I;16":
        im = Image.fromarray(gray.astype(np.uint16) * 257)
        expected = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "I":
        im = Image.fromarray(gray.astype(np.int32) * 257, "I")
        expected = np.repeat(gray[..., None], 3, axis=2)
    else:  # F, in 0..1
        im = Image.fromarray(gray.astype(np.float32) / 255.0, "F")
        expected = np.repeat(gray[..., None], 3, axis=2)
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == mode or (mode == "I;16" and back.mode.startswith("I")), (mode, back.mode)
    return expected


@pytest.mark.parametrize("mode", list(MODES))
def test_case03_every_pil_mode_decodes_like_its_reference(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    path = tmp_path / f"img.{MODES[mode]}"
    expected = _saved_in_mode(rgb, mode, path)
    got = data.read_rgb(path, (8, 8))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, mode
    assert not data.unreadable([path])


def test_case03_out_of_range_wide_images_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((4, 4), 70000, np.int32), "I").save(tmp_path / "wide.tif")
    Image.fromarray(np.full((4, 4), 300.0, np.float32), "F").save(tmp_path / "hot.tif")
    problems = data.unreadable([tmp_path / "wide.tif", tmp_path / "hot.tif"])
    assert len(problems) == 2 and "wide.tif" in problems[0] and "hot.tif" in problems[1]


# ------------------------------------------------------------------------------------------ 4. cache digest


def test_case04_zeroed_cache_data_is_recomputed_not_served(tiny_world, tmp_path, capfd):
    model = load_model(tiny_world.script, "auto", (3, 16, 16))
    images = data.folder_set("s", tiny_world.root / "world" / "concepts" / "red", PRE)
    first = np.array(Store(tmp_path / "c", PRE).acts(model, ["features.1"], images)["features.1"])
    (npy,) = list((tmp_path / "c").rglob("*.npy"))
    raw = bytearray(npy.read_bytes())
    header = len(raw) - first.nbytes
    raw[header:] = bytes(len(raw) - header)  # the header survives, the data is zeroed
    npy.write_bytes(bytes(raw))
    capfd.readouterr()
    fresh = Store(tmp_path / "c", PRE)
    again = np.array(fresh.acts(model, ["features.1"], images)["features.1"])
    assert np.array_equal(again, first)
    assert fresh.stats.from_disk == 0 and fresh.stats.extracted == 1
    err = capfd.readouterr().err
    assert "does not match its digest" in err and npy.name in err
    # ...and the recomputed file is served from then on
    third = Store(tmp_path / "c", PRE)
    third.acts(model, ["features.1"], images)
    assert third.stats.from_disk == 1


# ---------------------------------------------------------------------------------------- 5. INVERT negation


def _row(formula) -> dict:
    e = UnitExplanation(formula=formula, search_auc=0.95, search_support=40, auc=0.95, support=40, fraction=0.4,
                        p_value=1e-9)
    return invert_method._unit_row("candidate", "features.4", 0, e, ("watermark", "circle", "stripes"), ["watermark"])


def test_case05_negated_forbidden_concept_does_not_flag_a_unit():
    names = ("watermark", "circle", "stripes")
    neg = literal(0, True, names)
    for f in (neg, combine(literal(1, False, names), neg, "and"), combine(literal(2, False, names), neg, "or")):
        row = _row(f)
        assert row["forbidden"] == [], f.text
        assert row["suppressed_by"] == ["watermark"], f.text
    pos = _row(combine(literal(1, False, names), literal(0, False, names), "and"))
    assert pos["forbidden"] == ["watermark"] and pos["suppressed_by"] == []


# ----------------------------------------------------------------------------- 6-12. user mistakes, not exit 3


def test_case06_concept_with_one_image_is_a_validate_error(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world.root / "world", world)
    for extra in sorted((world / "concepts" / "blue").iterdir())[1:]:
        extra.unlink()
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    p = tmp_path / "p.yaml"
    p.write_text(_text(tiny_world))
    # (the exchangeability test's own set-size check may add a line about the same folder)
    user_error(("validate", str(p)), "data.concepts (blue)", "1 image", "at least 3")


class NanNet(tinynet.TinyNet):
    """TinyNet whose logits are NaN (a broken export, a division by zero in a head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1)) * float("nan")


def test_case07_nan_model_is_an_error_check_naming_model_and_layer_and_the_report_is_written(tiny_world, policy_dir):
    torch.jit.script(NanNet()).save(str(policy_dir / "nan.pt"))
    extra = """  - id: probe
    method: artifact_probe
    artifact: {image: world/concepts/red/0000.png, scale: 0.25}
    images_per_class: 4
"""
    p = policy_dir / "p.yaml"
    p.write_text(tiny_world.policy_text({"candidate": "nan.pt", "reference": "tiny.pt"}, extra_check=extra))
    out = policy_dir / "out"
    code, _o, err = cli("run", str(p), "--out", str(out), "--cache-dir", str(policy_dir / "c"), "--quiet")
    assert code == 3, err
    assert "Traceback" not in err
    import json

    def no_constant(c: str) -> None:
        raise AssertionError(f"results.json holds {c}")

    checks = {c["id"]: c for c in json.loads((out / "results.json").read_text(), parse_constant=no_constant)["checks"]}
    for cid in ("tcav-red", "probe"):
        assert checks[cid]["status"] == "ERROR"
        assert "candidate" in checks[cid]["summary"] and "NaN" in checks[cid]["summary"]
        assert "internal error" not in checks[cid]["summary"]
    assert "layer features" in checks["tcav-red"]["summary"]
    assert (out / "report.pdf").is_file()


def test_case08_policy_that_is_not_utf8_names_the_byte_offset(tiny_world, policy_dir):
    p = policy_dir / "p.yaml"
    p.write_bytes(_text(tiny_world).replace("tiny audit", "tiny audit \xe9").encode("latin-1"))
    offset = _text(tiny_world).index("\xe9") if "\xe9" in _text(tiny_world) else len("title: tiny audit ")
    lines = user_error(("validate", str(p)), "p.yaml", "not UTF-8", f"byte offset {offset}")
    assert len(lines) == 1


@pytest.mark.parametrize("where", ["cache-is-a-file", "out-under-a-file", "out-unwritable"])
def test_case09_output_and_cache_folders_are_checked_before_any_model_runs(tiny_world, policy_dir, where):
    p = policy_dir / "p.yaml"
    p.write_text(_text(tiny_world))
    (policy_dir / "a-file").write_text("x")
    args = {
        "cache-is-a-file": ["--out", str(policy_dir / "out"), "--cache-dir", str(policy_dir / "a-file")],
        "out-under-a-file": ["--out", str(policy_dir / "a-file" / "out"), "--cache-dir", str(policy_dir / "c")],
        # /proc refuses new folders even to root: a folder nothing can be written in, on any machine
        "out-unwritable": ["--out", "/proc/auditor-out", "--cache-dir", str(policy_dir / "c")],
    }[where]
    code, _o, err = cli("run", str(p), *args)
    assert code == 2, err
    assert "loading models" not in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == err.strip().splitlines()
    assert ("--cache-dir" if where == "cache-is-a-file" else "--out") in err


def test_case10_torch_model_built_for_another_size_is_one_line_naming_the_sizes_it_accepts(tiny_world, policy_dir):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 16 * 16, 2))
    torch.jit.script(net).save(str(policy_dir / "fixed.pt"))
    p = policy_dir / "p.yaml"
    p.write_text(tiny_world.policy_text({"candidate": "fixed.pt", "reference": "tiny.pt"}).replace("size: 16", "size: 20"))
    code, _o, err = cli("validate", str(p))
    assert code == 2 and "Traceback" not in err and "TorchScript" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "models.candidate" in lines[0] and "(3, 20, 20)" in lines[0]
    assert "16x16" in lines[0]


def test_case10_size_zero_is_a_schema_error(tiny_world, policy_dir):
    p = policy_dir / "p.yaml"
    p.write_text(_text(tiny_world).replace("size: 16", "size: 0"))
    assert len(user_error(("validate", str(p)), "preprocessing.size")) == 1


def test_case11_sacv_on_a_dense_layer_is_a_validate_error(tiny_world, policy_dir):
    extra = """  - id: where
    method: sacv
    classes: [a]
    concepts: [red]
    random_sets: 2
    set_size: 10
    layers: {candidate: [fc], reference: [features.4]}
"""
    p = policy_dir / "p.yaml"
    p.write_text(tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}, extra_check=extra))
    lines = user_error(("validate", str(p)), "checks[1].layers.candidate[0]", "'fc'", "convolutional")
    assert len(lines) == 1


def test_case11_artifact_that_is_not_an_image_is_a_validate_error(tiny_world, policy_dir):
    (policy_dir / "mark.png").write_text("not a png")
    extra = """  - id: probe
    method: artifact_probe
    artifact: {image: mark.png}
"""
    p = policy_dir / "p.yaml"
    p.write_text(tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}, extra_check=extra))
    lines = user_error(("validate", str(p)), "checks[1].artifact.image", "mark.png", "not a readable image")
    assert len(lines) == 1


def test_case12_layers_of_an_onnx_model_need_no_size(tiny_world):
    code, out, err = cli("layers", str(tiny_world.onnx))
    assert code == 0, err
    assert "input (3, 16, 16)" in out


# ----------------------------------------------------------------------------------- 13-14. outputs


PROBE_CHECK = """  - id: probe
    method: artifact_probe
    artifact: {image: world/concepts/red/0000.png, scale: 0.25}
    images_per_class: 4
"""


def _verdict_code(out: Path) -> int:
    """The exit code the written verdicts imply (0 all met, 1 a requirement failed, 3 a check crashed)."""
    from auditor import pipeline, results

    return pipeline.exit_code(results.read(out / "results.json"))


@pytest.fixture(scope="module")
def two_check_run(tiny_world, tmp_path_factory) -> Path:
    """A tiny two-check audit (TCAV and the artifact probe) run once through the CLI; returns its folder."""
    d = tmp_path_factory.mktemp("two-checks")
    (d / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, d / "tiny.pt")
    (d / "two.yaml").write_text(tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"},
                                                        extra_check=PROBE_CHECK))
    (d / "one.yaml").write_text(_text(tiny_world))
    code, _o, err = cli("run", str(d / "two.yaml"), "--out", str(d / "out"), "--cache-dir", str(d / "c"), "--quiet")
    assert code == _verdict_code(d / "out"), err
    return d


def test_case13_a_200000_character_title_is_cut_where_it_repeats(two_check_run, tmp_path):
    """The whole title in every running header made WeasyPrint lay the PDF out for 166 s: the title is cut in the
    running header and the outputs that repeat it, and shown whole once up to 2,000 characters (the render's speed
    is measured by benchmarks/render_speed.py, not asserted here)."""
    import json
    import re

    import pypdf

    d = json.loads((two_check_run / "out" / "results.json").read_text())
    d["title"] = "T" * 100_000 + " " + "long title " * 9_091
    assert len(d["title"]) >= 200_000
    (tmp_path / "results.json").write_text(json.dumps(d))
    code, _o, err = cli("render", str(tmp_path / "results.json"))
    assert code == 0, err
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    run_title = re.search(r'<p class="run-title">(.*?)</p>', html).group(1)
    assert len(run_title) <= 90 and run_title.endswith("…"), run_title
    assert "T" * 2_000 in html and "T" * 2_001 not in html  # nowhere more than the first 2,000 characters
    first_line = (tmp_path / "summary.md").read_text().splitlines()[0]
    assert len(first_line) < 200 and first_line.endswith("…")
    pages = pypdf.PdfReader(tmp_path / "report.pdf").pages
    assert "Full title (the first 2,000 of" in pages[0].extract_text()
    assert "long title" not in pages[1].extract_text()  # the running header of page 2 holds the cut title only


def test_case14_a_later_run_with_fewer_checks_leaves_no_stale_figures(two_check_run):
    out = two_check_run / "out"
    assert any("probe" in p.name for p in (out / "assets").iterdir())
    code, _o, err = cli("run", str(two_check_run / "one.yaml"), "--out", str(out), "--cache-dir",
                        str(two_check_run / "c"), "--quiet")
    assert code == _verdict_code(out), err
    left = sorted(p.name for p in (out / "assets").iterdir())
    assert left and not any("probe" in name for name in left), left


def test_case14_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(two_check_run):
    import fcntl
    import os

    out = two_check_run / "out"
    held = os.open(out, os.O_RDONLY)  # what a running audit holds: a lock on the folder
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _o, err = cli("run", str(two_check_run / "one.yaml"), "--out", str(out), "--cache-dir",
                            str(two_check_run / "c"))
        assert code == 2 and "another auditor run is writing into it" in err and "loading models" not in err
        code, _o, err = cli("render", str(out / "results.json"))
        assert code == 2 and "another auditor run" in err
    finally:
        os.close(held)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no lock file left among the outputs


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured (2026-12-03, 9 min): with the negation fix, two clean ReferenceNets trained as the demo trains "
    "(clean accuracy 0.996) still have features.7 units flagged on a *positive* watermark literal (e.g. reference "
    "units 19, 26, 41 at seed 0: 'watermark', 'watermark AND NOT blue AND NOT green'): clean models represent the "
    "glyph. Whether INVERT should flag representation without reliance is a METHODS.md decision, not a threshold"
))
def test_case05_two_clean_models_give_no_invert_flags_at_split_seeds_0_to_5(tmp_path):
    """Two models trained on clean data at different seeds (neither ever saw the watermark as a signal): INVERT
    with `forbidden: [watermark]` flags no unit of either at policy seeds 0-5 (each seed another search/test split).
    Before the fix, a unit whose formula held `NOT watermark` was flagged."""
    import json

    from auditor.demo.train import (
        EPOCHS, MEAN, REFERENCE_LAYERS, STD, TRAIN_IMAGES, ReferenceNet, export_torchscript, train_model,
    )
    from auditor.demo.world import CLASSES, make_dataset, write_world

    write_world(tmp_path / "world", seed=0, per_class=8, concept_size=4, random_pool=8)
    # Trained as the demo trains its clean reference: an under-trained net (a few epochs, near-chance accuracy)
    # has units that follow anything, the watermark included.
    clean = make_dataset(TRAIN_IMAGES, 0, size=64, shortcut_rate=0.0)
    for name, seed in (("a", 1), ("b", 2)):
        net = ReferenceNet()
        train_model(net, clean, seed, EPOCHS, name=name)
        export_torchscript(net, tmp_path / f"{name}.pt")
    layers = json.dumps(list(REFERENCE_LAYERS))
    flagged = {}
    for seed in range(6):
        (tmp_path / "p.yaml").write_text(f"""title: two clean models
seed: {seed}
models:
  candidate: {{path: a.pt}}
  reference: {{path: b.pt}}
preprocessing: {{size: 64, mean: {list(MEAN)}, std: {list(STD)}}}
data:
  classes: {{folder: world/classes, names: {json.dumps(list(CLASSES))}}}
layers: {{candidate: {layers}, reference: {layers}}}
checks:
  - id: units
    method: invert
    labels: world/probe/labels.csv
    forbidden: [watermark]
    require:
      - {{model: all, max_flagged_units: 0}}
""")
        outcome = pipeline.run_audit(load_policy(tmp_path / "p.yaml"), tmp_path / "cache", lambda _m: None)
        (check,) = outcome.result.checks
        flagged[seed] = [(f["model"], f["layer"], f["unit"], f["formula"]) for f in check.findings
                         if f.get("kind") == "unit" and f["flagged"]]
    assert all(not v for v in flagged.values()), {seed: len(v) for seed, v in flagged.items()}


def test_rendering_a_report_leaves_truncated_images_refused(tmp_path):
    """WeasyPrint turns on PIL's LOAD_TRUNCATED_IMAGES at import; after a report is rendered in this process a
    truncated PNG must still be refused (before the fix, test_bad_inputs' truncated-PNG case exited 0 when it ran
    after a test that rendered a report)."""
    import io

    import numpy as np
    from PIL import Image, ImageFile

    import weasyprint  # noqa: F401  (the import that flips the flag, whatever imported it first)
    from auditor import data, results
    from auditor.report.render import render_report
    from test_render import make_result

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as WeasyPrint's first import left it
    results.write(make_result(), tmp_path / "results.json")
    render_report(tmp_path / "results.json", tmp_path / "out")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(buf, format="PNG")
    half = tmp_path / "half.png"
    half.write_bytes(buf.getvalue()[:80])
    assert data.unreadable([half]), "a truncated PNG must be named as unreadable after a render"
