"""The report renderer: results.json -> report.html / report.pdf / junit.xml / summary.md / assets."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pypdf import PdfReader

from auditor import results
from auditor.report.pdf import check_assets
from auditor.report.render import RenderError, ResultsError, render_report
from auditor.results import (
    AuditResult,
    CheckResult,
    ImageSetInfo,
    ModelInfo,
    Provenance,
    Status,
)

EVIL_CONCEPT = "<b>x</b>"
EVIL_CLASS = "{{ 7*7 }}"
CAND_LAYERS = ["/features/features.3/Relu_output_0", "/features/features.8/Relu_output_0"]
REF_LAYERS = ["layer3", "layer4"]


def _finding(model: str, layer: str, concept: str, score: float | None, learned: bool = True,
             significant: bool = False, verdict: str = "not significant") -> dict:
    return {
        "model": model, "layer": layer, "class": EVIL_CLASS, "concept": concept,
        "score": score, "score_std": 0.06 if score is not None else None,
        "p_value": 3.2e-6 if significant else 0.31, "p_adjusted": 2.6e-5 if significant else 0.62,
        "significant": significant, "cav_accuracy": 0.93 if learned else 0.55, "learned": learned,
        "magnitude": 0.4 if score is not None else None,
        "random_score_mean": 0.52 if learned else None, "random_score_std": 0.11 if learned else None,
        "p_one_sample": 0.01 if learned else None, "verdict": verdict,
        "tested": learned, "cosine": 0.05 if learned else None, "test": "welch",
    }


def make_result() -> AuditResult:
    findings = [
        _finding("candidate", CAND_LAYERS[0], EVIL_CONCEPT, 0.71),
        _finding("candidate", CAND_LAYERS[1], EVIL_CONCEPT, 0.97, significant=True, verdict="sensitive"),
        _finding("candidate", CAND_LAYERS[0], "stripes", 0.58),
        _finding("candidate", CAND_LAYERS[1], "stripes", 0.12, significant=True, verdict="significant-low"),
        _finding("reference", REF_LAYERS[0], EVIL_CONCEPT, 0.56),
        _finding("reference", REF_LAYERS[1], EVIL_CONCEPT, 0.61),
        _finding("reference", REF_LAYERS[0], "stripes", None, learned=False, verdict="not learned"),
        _finding("reference", REF_LAYERS[1], "stripes", 0.53),
    ]
    tcav = CheckResult(
        id="tcav_shortcut",
        method="tcav",
        status=Status.FAIL,
        severity="critical",
        summary=f"candidate is sensitive to {EVIL_CONCEPT} at 1 of 2 layers (TCAV 0.97, p adj 2.6e-05)",
        requirement=f"class {EVIL_CLASS} must not be sensitive to {EVIL_CONCEPT}",
        findings=findings,
        details={
            "settings": {"cav": "logistic", "space": "pooled", "random_sets": 10, "set_size": 50, "alpha": 0.05,
                         "test": "Welch two-sided t-test, Holm-adjusted over 8 tests", "family_size": 8},
            "layers": {"candidate": CAND_LAYERS, "reference": REF_LAYERS},
            "requirements": [
                {"text": f"not sensitive to {EVIL_CONCEPT}", "model": "candidate", "met": False},
                {"text": f"not sensitive to {EVIL_CONCEPT}", "model": "reference", "met": True},
            ],
            "notes": ["stripes is not learned at layer3 of the reference model"],
        },
    )
    similarity = CheckResult(
        id="layer_similarity",
        method="custom_similarity",  # methods without a section builder of their own: the generic section
        status=Status.PASS,
        severity="minor",
        summary="deepest layers agree (CKA 0.83)",
        requirement="CKA of the last layers >= 0.7",
        findings=[{"layer_a": CAND_LAYERS[1], "layer_b": REF_LAYERS[1], "cka": 0.8312, "n_images": 200}],
        details={"kernel": "linear"},
    )
    warn = CheckResult(
        id="invert_units", method="custom_units", status=Status.WARN, severity="minor",
        summary="weak evidence: 2 units with AUC 0.61", requirement="no unit explains the concept",
        findings=[], details={},
    )
    skipped = CheckResult(
        id="rsvc_compare", method="rsvc", status=Status.SKIPPED, severity="major",
        summary="skipped: layer has negative activations", requirement="shared concepts >= 0.5",
        findings=[], details={"reason": "negative activations"},
    )
    prov = Provenance(
        tool_version="0.1.0",
        created="2025-11-23T13:21:07Z",
        policy_sha256="c0ffee" * 10 + "abcd",
        policy_path="policies/demo.yaml",
        seed=1234,
        models=[
            ModelInfo("candidate", "shapes-cnn-v2 " + "with-a-very-long-name-" * 3, "onnx", "ab" * 32, "models/c.onnx"),
            ModelInfo("reference", "shapes-cnn-v1", "torch", "cd" * 32, "models/r.pt"),
        ],
        image_sets=[
            ImageSetInfo(f"class:{EVIL_CLASS}", "ef" * 32, 60),
            ImageSetInfo(f"concept:{EVIL_CONCEPT}", "12" * 32, 50),
            ImageSetInfo("concept:stripes", "34" * 32, 50),
            ImageSetInfo("random:pool", "56" * 32, 600),
        ],
        libraries={"numpy": "2.1.0", "torch": "2.13.0", "weasyprint": "70.0"},
        command="auditor run policies/demo.yaml --out out/",
    )
    return AuditResult(schema_version=results.SCHEMA_VERSION, title="Shapes audit", verdict="FAIL",
                       provenance=prov, checks=[tcav, similarity, warn, skipped])


# With SOURCE_DATE_EPOCH set (as the audit sets it for reproducible runs) even the PDF bytes repeat: the
# fontTools font subsetter stamps fonts with the current time otherwise.
EPOCH = "1763904067"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    results_path = root / "results.json"
    results.write(make_result(), results_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        return root, render_report(results_path, root / "out")


def _pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def test_pdf_exists_and_reads(rendered) -> None:
    _, report = rendered
    data = report.pdf.read_bytes()
    assert data.startswith(b"%PDF")
    reader = PdfReader(report.pdf)
    assert len(reader.pages) >= 3
    text = _pdf_text(report.pdf)
    assert "FAIL" in text
    assert EVIL_CONCEPT in text
    squeezed = re.sub(r"\s+", "", text)
    assert "{{7*7}}" in squeezed
    assert not re.search(r"\b49\b", text)
    assert "page 1 of" in text or "page 2 of" in text
    assert "Limits of the method" in text
    # results.json rides along inside the PDF.
    assert "results.json" in reader.attachments


def test_html_escapes_names(rendered) -> None:
    _, report = rendered
    html = report.html.read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>x</b>" not in html
    assert EVIL_CLASS in html
    assert ">49<" not in html


def test_junit(rendered) -> None:
    _, report = rendered
    root = ET.parse(report.junit).getroot()
    cases = root.findall(".//testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("tcav", "tcav_shortcut"), ("custom_similarity", "layer_similarity"), ("custom_units", "invert_units"),
        ("rsvc", "rsvc_compare"),
    ]
    by_name = {c.get("name"): c for c in cases}
    failure = by_name["tcav_shortcut"].find("failure")
    assert failure is not None and EVIL_CONCEPT in failure.get("message")
    assert list(by_name["layer_similarity"]) == []
    assert "weak evidence" in by_name["invert_units"].find("system-out").text
    assert by_name["rsvc_compare"].find("skipped") is not None
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")


def test_summary_md(rendered) -> None:
    _, report = rendered
    md = report.summary.read_text(encoding="utf-8")
    assert "**Verdict: FAIL**" in md
    assert "| Check | Method | Severity | Status | Summary |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4
    assert "&lt;b&gt;x&lt;/b&gt;" in md  # a name cannot turn into HTML in a CI job summary
    assert all(line.count("|") - line.count("\\|") == 6 for line in rows)


def test_assets_referenced_exist(rendered) -> None:
    _, report = rendered
    html = report.html.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 1  # one TCAV figure: a panel per model
    for src in srcs:
        path = report.out_dir / src
        assert path.is_file() and path.read_bytes().lstrip().startswith(b"<?xml")
        assert path in report.assets
    assert not list(report.out_dir.glob(".render-*"))


def test_render_is_reproducible(rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, first = rendered
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    second = render_report(root / "results.json", tmp_path / "again")
    html = second.html.read_text(encoding="utf-8")
    assert html == first.html.read_text(encoding="utf-8")
    assert str(tmp_path) not in html and ".render-" not in html
    assert second.pdf.read_bytes() == first.pdf.read_bytes()
    assert [p.name for p in second.assets] == [p.name for p in first.assets]
    for a, b in zip(first.assets, second.assets):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert second.junit.read_bytes() == first.junit.read_bytes()
    assert second.summary.read_bytes() == first.summary.read_bytes()


def _grid(html: str) -> list[list[list[str]]]:
    """The TCAV findings tables: per table, its rows (head first), each [row label, cell, cell, ...]."""
    tables = re.findall(r'<table class="data tcav-grid[^"]*">(.*?)</table>', html, re.S)
    return [[[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
             for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)] for table in tables]


def test_tcav_findings_grid(rendered) -> None:
    """Every finding once: a row per (class, concept), a column per layer; random and CAV accuracy rows."""
    _, report = rendered
    cls, evil = EVIL_CLASS, "&lt;b&gt;x&lt;/b&gt;"
    ns, sig = "p 0.31 · adj. 0.62", "p 3.20e-6 · adj. 2.60e-5"
    assert _grid(report.html.read_text(encoding="utf-8")) == [
        [
            ["candidate", f"1. {CAND_LAYERS[0]}", f"2. {CAND_LAYERS[1]}"],
            [f"{cls} · {evil}", f"0.71 ± 0.06\n{ns}", f"0.97 ± 0.06 ★ sensitive\n{sig}"],
            [f"{cls} · stripes", f"0.58 ± 0.06\n{ns}", f"0.12 ± 0.06 ★ below random\n{sig}"],
            ["random vs random", f"{cls} 0.52 ± 0.11", f"{cls} 0.52 ± 0.11"],
            ["CAV accuracy", f"{evil} 0.93\nstripes 0.93", f"{evil} 0.93\nstripes 0.93"],
        ],
        [
            ["reference", "1. layer3", "2. layer4"],
            [f"{cls} · {evil}", f"0.56 ± 0.06\n{ns}", f"0.61 ± 0.06\n{ns}"],
            [f"{cls} · stripes", "not learned", f"0.53 ± 0.06\n{ns}"],
            ["random vs random", f"{cls} 0.52 ± 0.11", f"{cls} 0.52 ± 0.11"],
            ["CAV accuracy", f"{evil} 0.93\nstripes 0.55 not learned", f"{evil} 0.93\nstripes 0.93"],
        ],
    ]
    text = " ".join(_pdf_text(report.pdf).split())
    assert f"0.97 ± 0.06 ★ sensitive {sig}" in text and "stripes 0.55 not learned" in text


def _tcav_section(check: CheckResult, tmp_path: Path):
    from auditor.report.render import build_section

    base = make_result()
    result = AuditResult(schema_version=base.schema_version, title="t", verdict="FAIL", provenance=base.provenance,
                         checks=[check])
    return build_section(0, check, result, tmp_path)


def test_tcav_grid_puts_unshared_numbers_in_the_cells(tmp_path: Path) -> None:
    """Random scores that differ between concepts of one (model, layer, class) go into every cell, not a row."""
    tcav = make_result().checks[0]
    findings = [dict(f, random_score_mean=0.4) if f["concept"] == "stripes" and f["learned"] else f
                for f in tcav.findings]
    section = _tcav_section(dataclasses.replace(tcav, findings=findings), tmp_path)
    assert section.data["shared_random"] is False and section.data["shared_accuracy"] is True
    rows = section.data["grid"][0]["rows"]
    assert [r["kind"] for r in rows] == ["finding", "finding", "accuracy"]
    assert rows[1]["cells"][0]["lines"] == ["0.58 ± 0.06", "p 0.31 · adj. 0.62", "random 0.40 ± 0.11"]


def test_tcav_grid_splits_many_layers(tmp_path: Path) -> None:
    tcav = make_result().checks[0]
    layers = [f"block{i}" for i in range(6)]
    findings = [dict(tcav.findings[0], model="candidate", layer=layer) for layer in layers]
    details = dict(tcav.details, layers={"candidate": layers})
    section = _tcav_section(dataclasses.replace(tcav, findings=findings, details=details), tmp_path)
    blocks = section.data["grid"]
    assert [(b["first_layer"], b["layers"], b["more"]) for b in blocks] == [
        (1, layers[:4], False), (5, layers[4:], True)]
    assert section.data["grid_columns"] == 4


def test_tcav_figure_has_a_panel_per_model(tmp_path: Path) -> None:
    from PIL import Image

    from auditor.report.figures import tcav as figures
    from auditor.report.figures.common import raster_path

    bars = [figures.TcavBar(group="c\nclass k", layer=layer, score=0.7, std=0.4, random_mean=0.5, random_std=0.1,
                            significant=True, learned=True) for layer in ("a", "b")]
    one = figures.tcav_models([figures.TcavPanel("m1", tuple(bars), ("a", "b"))], ["c\nclass k"], tmp_path / "1.svg")
    two = figures.tcav_models([figures.TcavPanel("m1", tuple(bars), ("a", "b")),
                               figures.TcavPanel("m2", tuple(bars), ("a", "b"))], ["c\nclass k"], tmp_path / "2.svg")
    h1, h2 = (Image.open(raster_path(p)).height for p in (one, two))
    assert h2 > 1.7 * h1
    assert two.read_text(encoding="utf-8").startswith("<?xml")
    # The single-model chart (used by other sections) still draws the same bars.
    figures.tcav_scores(bars, ["c\nclass k"], ["a", "b"], tmp_path / "s.svg", title="m1")
    assert raster_path(tmp_path / "s.svg").is_file()


def test_render_reports_its_phases(rendered) -> None:
    _, report = rendered
    assert set(report.timings) == {"sections", "figures", "html", "pdf_layout", "figures_wait", "pdf_write"}
    assert all(s >= 0 for s in report.timings.values()) and report.timings["pdf_layout"] > 0


def test_pdf_embeds_png_rasters_of_the_svg_figures(rendered) -> None:
    from auditor.report.render import pdf_html

    _, report = rendered
    html = report.html.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]+)"', html)
    for src in srcs:
        png = (report.out_dir / src).with_suffix(".png")
        assert png.is_file() and png in report.assets
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert b"tEXt" not in png.read_bytes() and b"tIME" not in png.read_bytes()  # no tool version, no date
    # The PDF's HTML refers to the rasters instead (relative: resolved under PDF_BASE_URL, never the out directory).
    swapped = pdf_html(html, report.out_dir)
    assert re.findall(r'src="([^"]+)"', swapped) == [str(Path(s).with_suffix(".png")) for s in srcs]
    assert pdf_html('<img src="assets/by-the-audit.svg">', report.out_dir) == '<img src="assets/by-the-audit.svg">'
    assert str(report.out_dir).encode() not in report.pdf.read_bytes()
    # ...and the PDF holds bitmaps, not the figures' vector paths.
    images = [name for page in PdfReader(report.pdf).pages for name in page.images]
    assert len(images) >= len(srcs)


def test_parallel_figures_give_the_same_bytes(rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.report import workers

    root, first = rendered
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    monkeypatch.setattr(workers, "PARALLEL_MIN_FIGURES", 1)
    monkeypatch.setattr(workers, "worker_count", lambda: 2)
    second = render_report(root / "results.json", tmp_path / "parallel")
    assert [p.name for p in second.assets] == [p.name for p in first.assets]
    for a, b in zip(first.assets, second.assets):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert second.pdf.read_bytes() == first.pdf.read_bytes()


def test_pdf_laid_out_while_figures_are_drawn_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers draw the figures while the PDF is laid out (a placeholder for the probe figure, a wait for the TCAV
    figure, made to announce no size): the same bytes as drawing everything first."""
    from auditor.report import workers
    from auditor.report.figures import tcav as tcav_figures

    base = make_result()
    result = dataclasses.replace(base, checks=[base.checks[0], make_probe_check()])
    results.write(result, tmp_path / "results.json")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    monkeypatch.setattr(workers, "worker_count", lambda: 2)
    first = render_report(tmp_path / "results.json", tmp_path / "serial")  # 2 figures: below PARALLEL_MIN_FIGURES
    monkeypatch.setattr(workers, "PARALLEL_MIN_FIGURES", 1)
    monkeypatch.setattr(tcav_figures, "tcav_models_size", lambda *args: None)
    second = render_report(tmp_path / "results.json", tmp_path / "pipelined")
    assert [p.name for p in second.assets] == [p.name for p in first.assets] and len(first.assets) == 4
    for a, b in zip(first.assets, second.assets):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert second.pdf.read_bytes() == first.pdf.read_bytes()
    assert len({image.name for page in PdfReader(second.pdf).pages for image in page.images}) == 2


def test_figure_worker_error_names_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.report import types, workers
    from auditor.report.figures import artifact_probe as figures

    job = types.FigureJob("bad_check", figures.artifact_auc, (None,), {})  # TypeError
    monkeypatch.setattr(workers, "PARALLEL_MIN_FIGURES", 1)
    monkeypatch.setattr(workers, "worker_count", lambda: 2)
    with pytest.raises(ResultsError, match="bad_check"):
        workers.draw_figures([job, job])  # one drawn here, one in a worker
    with pytest.raises(ResultsError, match="bad_check"):
        workers.draw_figures([types.FigureJob("ok", len, ((),), {}), job])  # the failure in the worker


def test_placeholder_has_the_size_and_no_pixels() -> None:
    import io

    from PIL import Image

    from auditor.report.workers import placeholder_png

    image = Image.open(io.BytesIO(placeholder_png((321, 123))))
    assert image.size == (321, 123) and image.mode == "RGB"
    with pytest.raises(Exception):  # it can never be decoded into a (blank) figure
        image.load()


def _sized_job(tmp_path: Path, size: tuple[int, int], check_id: str = "sized_check"):
    from auditor.report import types
    from auditor.report.figures import artifact_probe as figures

    bars = [figures.AucBar(model="candidate", cls="a", auc=0.9, reliant=True)]
    kw = dict(threshold=0.7, direction="both", title="Artifact w.png")
    ctx = types.SectionContext(result=make_result(), assets_dir=tmp_path, stem="s", roles=("candidate",),
                                jobs=[], check_id=check_id)
    ctx.draw_sized(size, figures.artifact_auc, bars, ["a"], ["candidate"], tmp_path / "auc.svg", **kw)
    return ctx.jobs[0], figures.artifact_auc_size(["a"], ["candidate"], **kw)


def test_announced_figure_size_is_the_drawn_size(tmp_path: Path) -> None:
    from PIL import Image

    from auditor.report import workers

    job, size = _sized_job(tmp_path, (0, 0))
    assert job.svg and job.raster == tmp_path / "auc.png"
    workers.run_job(dataclasses.replace(job, size=size))
    assert Image.open(tmp_path / "auc.png").size == size
    # A figure that comes out at another size than announced (the PDF was laid out for that one) is an error.
    with pytest.raises(RenderError, match=r"auc.png of check 'sized_check' is \d+x\d+ pixels, not the 10x10"):
        workers.run_job(dataclasses.replace(job, size=(10, 10)))


def test_pdf_waits_for_figures_and_reports_worker_errors(tmp_path: Path) -> None:
    from auditor.report import types, workers
    from auditor.report.figures import artifact_probe as figures

    (tmp_path / "assets").mkdir()
    good, size = _sized_job(tmp_path / "assets", (0, 0))
    good = dataclasses.replace(good, size=size)
    unsized = dataclasses.replace(good, size=None, args=good.args[:3] + (tmp_path / "assets" / "late.svg",),
                                  raster=tmp_path / "assets" / "late.png")
    drawing = workers.FigureDrawing([good, unsized], tmp_path, workers=2)
    # The sized figure has its placeholder at once; the other one is pending until a worker draws it.
    assert (tmp_path / "assets" / "auc.png").read_bytes() == workers.placeholder_png(size)
    assert drawing.pending == {Path("assets/late.png")}
    assert drawing.wait_for(Path("assets/late.png")) and (tmp_path / "assets" / "late.png").is_file()
    assert not drawing.wait_for(Path("assets/unknown.png"))
    drawing.join()
    assert (tmp_path / "assets" / "auc.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "assets" / "auc.png").read_bytes() != workers.placeholder_png(size)
    assert (tmp_path / "assets" / "auc.svg").is_file()  # the SVG too

    bad = types.FigureJob("bad_check", figures.artifact_auc, (None,), {}, svg=True,
                           raster=tmp_path / "assets" / "bad.png")  # TypeError in the worker
    drawing = workers.FigureDrawing([bad], tmp_path, workers=1)
    with pytest.raises(ResultsError, match="bad_check"):
        drawing.wait_for(Path("assets/bad.png"))


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    data = results.to_dict(make_result())
    del data["checks"][1]["status"]
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"checks\[1\].*layer_similarity.*status"):
        render_report(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "report.pdf").exists()
    assert not list((tmp_path / "out").glob(".render-*"))


def test_malformed_tcav_finding_names_the_check(tmp_path: Path) -> None:
    data = results.to_dict(make_result())
    del data["checks"][0]["findings"][2]["layer"]
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"tcav_shortcut.*findings\[2\].*layer"):
        render_report(bad, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_missing_asset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "here.svg").write_text("<svg/>")
    check_assets('<img src="assets/here.svg">', [tmp_path])
    with pytest.raises(RenderError, match="gone.svg"):
        check_assets('<img src="assets/gone.svg">', [tmp_path])
    with pytest.raises(RenderError, match="only files under assets"):
        check_assets('<img src="https://example.org/x.svg">', [tmp_path])


def test_not_json_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ResultsError, match="not valid JSON"):
        render_report(bad, tmp_path / "out")


def test_templates_come_from_the_package() -> None:
    from importlib.resources import files

    assert files("auditor.templates").joinpath("report.html.j2").is_file()
    assert files("auditor.templates").joinpath("report.css").is_file()


def test_wheel_ships_the_templates(tmp_path: Path) -> None:
    """A non-editable wheel must carry templates/ as auditor/templates."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("concept_auditor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "auditor/templates/report.html.j2" in names
    assert "auditor/templates/report.css" in names
    assert "auditor/templates/sections/tcav.html.j2" in names  # the section templates, one per method
    assert "auditor/report/sections/tcav.py" in names and "auditor/report/figures/common.py" in names
    assert "auditor/cli.py" in names


# ---------------------------------------------------------------------------------------------------------------
# The artifact probe's section

PROBE_CLASS = "<i>z</i>"


def _probe_finding(model: str, cls: str, auc: float, reliant: bool, shift: float, flipped: float) -> dict:
    return {
        "model": model, "class": cls, "artifact": "world/watermark.png", "auc": auc, "reliant": reliant,
        "effect": "raises" if auc > 0.5 else ("suppresses" if auc < 0.5 else "none"),
        "mean_logit_shift": shift, "flipped_to_class": flipped, "prediction_changed": 0.754167 if model == "candidate"
        else 0.0375, "n_pairs": 240,
    }


def make_probe_check(classes: list[str] | None = None) -> CheckResult:
    if classes is None:
        findings = [
            _probe_finding("candidate", "circle", 0.182795, True, -25.260063, 0.0),
            _probe_finding("candidate", PROBE_CLASS, 0.882604, True, 19.695406, 0.575),
            _probe_finding("candidate", "star", 0.480122, False, -1.309774, 0.0),
            _probe_finding("reference", "circle", 0.505816, False, 0.162535, 0.004167),
            _probe_finding("reference", PROBE_CLASS, 0.494028, False, -0.088507, 0.016667),
            _probe_finding("reference", "star", 0.485486, False, -0.893815, 0.0),
        ]
    else:
        findings = [_probe_finding(m, c, 0.5 + 0.01 * i, False, 0.1, 0.0)
                    for m in ("candidate", "reference") for i, c in enumerate(classes)]
    return CheckResult(
        id="watermark_reliance",
        method="artifact_probe",
        status=Status.FAIL,
        severity="critical",
        summary=f"NOT MET candidate: circle (suppresses, AUC 0.18), {PROBE_CLASS} (raises, AUC 0.88) rely on it",
        requirement="candidate: at most 0 classes may rely on the artifact (AUC > 0.7 or < 0.3)",
        findings=findings,
        details={
            "settings": {
                "artifact": {"image": "world/watermark.png", "position": "bottom-right", "scale": None,
                             "margin": 0.05, "opacity": 1.0},
                "threshold": 0.7, "direction": "both", "n_pairs": 240,
                "test": "AUC of each class logit, artifact vs neutral patch (average ranks, ties count half)",
            },
            "requirements": [{
                "text": "candidate: at most 0 classes may rely on the artifact (AUC > 0.7 or < 0.3)",
                "model": "candidate", "met": False,
                "why": f"candidate: circle (suppresses, AUC 0.18), {PROBE_CLASS} (raises, AUC 0.88) rely on the artifact",
            }],
            "notes": ["probe images: 60 per class"],
        },
    )


@pytest.fixture(scope="module")
def probe_rendered(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("probe")
    base = make_result()
    result = AuditResult(schema_version=base.schema_version, title="Probe audit", verdict="FAIL",
                         provenance=base.provenance, checks=[make_probe_check(), base.checks[1]])
    results_path = root / "results.json"
    results.write(result, results_path)
    return render_report(results_path, root / "out")


def _probe_rows(html: str) -> list[list[str]]:
    (table,) = re.findall(r'<table class="data probe[^"]*">(.*?)</table>', html, re.S)
    body = table.split("<tbody>", 1)[1]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def _probe_reliant_cells(html: str) -> list[str]:
    (table,) = re.findall(r'<table class="data probe[^"]*">(.*?)</table>', html, re.S)
    cells = re.findall(r'<td class="[^"]*v-reliant[^"]*">(.*?)</td>', table, re.S)
    return [re.sub(r"<[^>]+>", "", c).strip() for c in cells]


def test_probe_section_figure(probe_rendered) -> None:
    report = probe_rendered
    html = report.html.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs == ["assets/check-1-watermark-reliance-probe-auc.svg"]
    svg = report.out_dir / srcs[0]
    assert svg.is_file() and svg in report.assets
    assert svg.read_bytes().lstrip().startswith(b"<?xml")
    assert "bars that end in a shaded band (AUC above 0.7 or below 0.3)" in html
    assert "does nothing beyond what a neutral patch of the same shape does" in html


def test_probe_section_table(probe_rendered) -> None:
    html = probe_rendered.html.read_text(encoding="utf-8")
    # A row per class; per model: AUC (with "reliant · effect" under it), mean logit shift, share flipped to the class.
    assert _probe_rows(html) == [
        ["circle", "0.18\nreliant · suppresses", "-25.26", "0.0 %", "0.51", "0.16", "0.4 %"],
        ["&lt;i&gt;z&lt;/i&gt;", "0.88\nreliant · raises", "19.70", "57.5 %", "0.49", "-0.09", "1.7 %"],
        ["star", "0.48", "-1.31", "0.0 %", "0.49", "-0.89", "0.0 %"],
    ]
    # Reliance is marked by words and by the cell's style, never by colour alone.
    assert _probe_reliant_cells(html) == ["0.18\nreliant · suppresses", "0.88\nreliant · raises"]
    assert re.search(r'<th colspan="3" class="probe-model">candidate</th><th colspan="3" class="probe-model">'
                     r'reference</th>', html)
    # Requirements with their badges; notes are shown.
    assert '<span class="badge status-fail">not met</span>' in html
    assert "probe images: 60 per class" in html
    assert "in the bottom-right corner, 5 % of the image side from the edges" in html
    assert "over the 240 pairs" in html
    assert "75.4 % of the pairs for <b>candidate</b>" in html


def test_probe_pairs_per_class_when_they_differ(tmp_path: Path) -> None:
    from auditor.report.render import build_section

    check = make_probe_check()
    findings = [dict(f, n_pairs=240 if f["class"] == "circle" else 60) for f in check.findings]
    check = dataclasses.replace(check, findings=findings)
    base = make_result()
    result = AuditResult(schema_version=base.schema_version, title="t", verdict="FAIL", provenance=base.provenance,
                         checks=[check])
    section = build_section(0, check, result, tmp_path)
    first = section.data["table"][0]["cells"][0]
    assert first["auc"] == ["0.18", "reliant · suppresses", "240 pairs"]
    assert section.data["table"][2]["cells"][1]["auc"] == ["0.49", "60 pairs"]


def test_probe_section_prints_names_literally(probe_rendered) -> None:
    report = probe_rendered
    html = report.html.read_text(encoding="utf-8")
    assert PROBE_CLASS not in html
    assert "&lt;i&gt;z&lt;/i&gt;" in html
    text = _pdf_text(report.pdf)
    assert PROBE_CLASS in text
    assert "Limits of the method" in text
    assert "It says nothing about concepts that cannot be pasted." in " ".join(text.split())


def test_summary_breaks_identifiers_at_underscores(probe_rendered) -> None:
    html = probe_rendered.html.read_text(encoding="utf-8")
    assert "<td class=\"ident\">artifact_<wbr>probe</td>" in html
    assert ">watermark_<wbr>reliance</a>" in html


def test_probe_figure_shows_at_most_30_classes(tmp_path: Path) -> None:
    from auditor.report.render import build_section

    classes = [f"class{i:02d}" for i in range(40)]
    base = make_result()
    check = make_probe_check(classes)
    result = AuditResult(schema_version=base.schema_version, title="t", verdict="FAIL", provenance=base.provenance,
                         checks=[check])
    section = build_section(0, check, result, tmp_path)
    assert section.block == "artifact_probe"
    assert len(section.data["table"]) == 40 and all(len(r["cells"]) == 2 for r in section.data["table"])
    (fig,) = section.figures
    assert "shows the 30 of 40 classes the artifact moves most" in fig.caption
    svg = (tmp_path / Path(fig.src).name).read_text(encoding="utf-8")
    assert svg.startswith("<?xml")


def test_a_figure_being_drawn_is_waited_for_not_read_half_written(tmp_path: Path) -> None:
    """The PDF's fetcher asks the drawing first: meanwhile the stage may hold the figure half-written and the
    output folder an older render's figure of the same name (either once dropped a figure from the PDF)."""
    import io

    from PIL import Image

    from auditor.report import pdf

    def png(size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 30, 30)).save(buf, format="png")
        return buf.getvalue()

    stage, out_dir = tmp_path / "stage", tmp_path / "out"
    for root in (stage, out_dir):
        (root / "assets").mkdir(parents=True)
    whole = png((300, 120))
    (stage / "assets" / "fig.png").write_bytes(whole[: len(whole) // 3])  # a worker is writing it
    (out_dir / "assets" / "fig.png").write_bytes(png((40, 40)))  # an earlier render's figure
    asked: list[Path] = []

    def wait_for(relative: Path) -> bool:
        asked.append(relative)
        if relative != Path("assets/fig.png"):
            return False
        (stage / "assets" / "fig.png").write_bytes(whole)  # the worker finishes
        return True

    html = '<html><body><img src="assets/fig.png" style="width: 10cm"></body></html>'
    pdf.write_pdf(html, tmp_path / "r.pdf", out_dir, stage, b"{}", make_result(), wait_for=wait_for)
    assert Path("assets/fig.png") in asked
    images = [image.image.size for page in PdfReader(tmp_path / "r.pdf").pages for image in page.images]
    assert images == [(300, 120)]


def test_an_image_weasyprint_cannot_read_stops_the_render(tmp_path: Path) -> None:
    """WeasyPrint drops such an image with a log line; the report must not go out with a hole under a caption,
    even when the PDF's image count alone would not show it (another image with a soft mask counts twice)."""
    import io

    from PIL import Image

    from auditor.report import pdf

    stage = tmp_path / "stage"
    (stage / "assets").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGBA", (50, 20), (0, 0, 0, 128)).save(buf, format="png")  # image + soft mask: 2 image objects
    (stage / "assets" / "ok.png").write_bytes(buf.getvalue())
    (stage / "assets" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    html = '<html><body><img src="assets/ok.png"><img src="assets/bad.png"></body></html>'
    with pytest.raises(RenderError, match=r"lack what the report shows: Failed to load image at .*bad\.png"):
        pdf.write_pdf(html, tmp_path / "r.pdf", tmp_path, stage, b"{}", make_result())
