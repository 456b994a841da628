"""The `auditor` command: thin — parse, call one function, map exceptions to exit codes.

Exit codes: 0 all checks pass · 1 a check failed at or above --fail-on · 2 bad usage, invalid policy or input ·
3 internal error. A user mistake prints one line per problem, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import click

from auditor.errors import UserError

if TYPE_CHECKING:
    from auditor.policy import Policy
    from auditor.results import AuditResult

EXIT_USER = 2
EXIT_INTERNAL = 3

# `--device` of every command that runs models (auditor.models.device says what each choice does).
device_option = click.option(
    "--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
    help="where torch models and ONNX sessions run; auto: CUDA where torch/onnxruntime has it, else the CPU",
)


def writable_dir(path: Path, option: str) -> None:
    """Create `path` (and its parents) and prove a file can be written in it; else a UserError naming `option`."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise UserError(f"{option} {path}: {where}; give a folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".auditor-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or type(e).__name__})") from None


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder `out` while a run writes into it: a second run into the same folder
    stops at once (exit 2) instead of interleaving its files with the first's. The lock is on the folder itself
    (flock on its descriptor), so no lock file is left among the outputs, and the OS drops it when the process
    dies."""
    import fcntl

    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"--out {out}: another auditor run is writing into it; wait for it or use another folder") from None
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def fresh_assets(out: Path) -> None:
    """Empty `out/assets` before a report is rendered into `out`: only the render writes there, and figures of
    checks an earlier run had (and this one has not) must not sit beside the new report."""
    assets = out / "assets"
    if assets.is_symlink() or assets.is_file():
        raise UserError(f"{assets}: is not a folder; remove it (the report writes its figures there)")
    if assets.is_dir():
        shutil.rmtree(assets)


def _logger(quiet: bool = False) -> Callable[[str], None]:
    start = time.monotonic()

    def log(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.monotonic() - start:6.1f}s] {msg}", err=True)

    return log


def _guard(fn: Callable) -> Callable:
    """User mistakes -> one line each on stderr, exit 2; anything else -> exit 3 with the traceback in a file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            for line in str(e).splitlines():
                click.echo(f"error: {line}", err=True)
            sys.exit(EXIT_USER)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `auditor layers m.onnx | head`: the reader left; nothing is wrong, say nothing
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout again at exit
            sys.exit(141)
        except Exception as e:
            log = Path(tempfile.gettempdir()) / "auditor-traceback.txt"
            log.write_text(traceback.format_exc(), encoding="utf-8")
            click.echo(f"internal error: {type(e).__name__}: {e} (traceback in {log})", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


@click.group()
@click.version_option(package_name="concept-auditor")
def main() -> None:
    """Audit two image models with concept tests and write a PDF report."""


def _audit(
    policy_path: Path, out: Path, cache_dir: Path | None, fail_on: str, quiet: bool, baseline: Path | None = None,
    device: str = "cpu", max_memory: str | None = None,
) -> int:
    from auditor import memory, results
    from auditor.policy import load_policy

    budget = memory.parse_size(max_memory) if max_memory is not None else None  # a bad size: exit 2 at once
    log = _logger(quiet)
    policy = load_policy(policy_path)
    old = results.read(baseline) if baseline is not None else None  # a bad baseline fails before the audit runs
    cache = cache_dir if cache_dir is not None else Path(".auditor-cache")
    # Before any model runs: an audit that cannot write its report or cache must not run for minutes first.
    writable_dir(out, "--out")
    writable_dir(cache, "--cache-dir")
    with output_lock(out):
        return _audit_locked(policy, old, out, cache, fail_on, log, device, budget)


def _audit_locked(
    policy: "Policy", old: "AuditResult | None", out: Path, cache: Path, fail_on: str, log: Callable[[str], None],
    device: str = "cpu", max_memory: int | None = None,
) -> int:
    import dataclasses

    from auditor import pipeline, results
    from auditor.diff import diff_results
    from auditor.report.render import render_report

    errors_log = out / "errors.log"
    errors_log.unlink(missing_ok=True)
    command = "auditor " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    outcome = pipeline.run_audit(policy, cache, log, command=command, errors_log=errors_log, device=device,
                                 max_memory=max_memory)
    result = outcome.result
    if old is not None:
        result = dataclasses.replace(result, baseline=diff_results(old, result))
    results_path = out / "results.json"
    results.write(result, results_path)
    log("rendering report")
    fresh_assets(out)
    rendered = render_report(results_path, out)
    code = pipeline.exit_code(result, fail_on)
    click.echo(f"verdict: {result.verdict}  report: {rendered.pdf}", err=True)
    for c in result.checks:
        click.echo(f"  {c.status.value:7s} {c.severity:8s} {c.id}: {c.summary}", err=True)
    click.echo(peak_line(), err=True)
    return code


def peak_line() -> str:
    """The run's peak resident memory, printed last by every `auditor run` (with --quiet too, like the verdict)."""
    from auditor import memory

    return f"peak memory: {memory.peak_rss_mib():.0f} MiB resident"


@main.command()
@click.argument("policy", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("audit-out"), show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="default: .auditor-cache/")
@click.option("--fail-on", type=click.Choice(["critical", "major", "minor"]), default="minor", show_default=True,
              help="lowest severity of a failed check that makes the exit code 1")
@click.option("--quiet", is_flag=True, help="no progress on stderr")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="an earlier results.json: the report gets a 'Changes since the baseline' section")
@device_option
@click.option("--max-memory", default=None, metavar="SIZE",
              help="memory budget the models' chunks are sized against, e.g. 4GiB (default: half the machine's "
                   "available memory, at most 4 GiB)")
@_guard
def run(
    policy: Path, out: Path, cache_dir: Path | None, fail_on: str, quiet: bool, baseline: Path | None, device: str,
    max_memory: str | None,
) -> None:
    """Run the audit POLICY describes; write results.json and the report into --out."""
    sys.exit(_audit(policy, out, cache_dir, fail_on, quiet, baseline, device, max_memory))


@main.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="also write the diff as JSON")
@click.option("--fail-on-regression", is_flag=True, help="exit 1 when a check went from passing to FAIL or ERROR")
@_guard
def diff_command(old: Path, new: Path, json_out: Path | None, fail_on_regression: bool) -> None:
    """What changed from OLD to NEW (two results.json): checks that changed status, findings that moved."""
    import json

    from auditor import results
    from auditor.diff import diff_results, format_diff, regressions

    d = diff_results(results.read(old), results.read(new))
    click.echo(format_diff(d))
    if json_out is not None:
        json_out.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if fail_on_regression and regressions(d):
        sys.exit(1)


@main.command()
@click.argument("policy", type=click.Path(path_type=Path))
@device_option
@_guard
def validate(policy: Path, device: str) -> None:
    """Check POLICY: schema, files, layers, images. Exit 0 when the audit can run."""
    from auditor import pipeline
    from auditor.policy import load_policy

    p = load_policy(policy)
    pipeline.prepare(p, Path(tempfile.gettempdir()) / "auditor-validate-cache", lambda _m: None, device)
    click.echo(f"{policy}: valid ({len(p.checks)} checks, models: {', '.join(p.models)})")


@main.command()
@click.argument("model")
@click.option("--size", type=int, default=None, help="input image side for torch models (ONNX models know it)")
@click.option("--trust-pickle", is_flag=True, help="allow a whole pickled nn.Module (runs code from the file)")
@device_option
@_guard
def layers(model: str, size: int | None, trust_pickle: bool, device: str) -> None:
    """List MODEL's layers (a file, or module:factory[@weights]) with output shapes, kinds and relative depths.

    \b
    Every name listed can go in a policy's `layers:` (docs/layers.md).
    ONNX: every float tensor, by its tensor name; the kind is the producing op.
    torch (module:factory, torch.export .pt2, TorchScript; the same names in all three): module outputs by
    module path (features.4), kind the module class; functional results (F.relu6(x), x + y, torch.flatten) as
    <module path>.<op> of the module whose code makes the call (layer1.0.add, blocks.2.relu6; in the top-level
    module no path: flatten), the second call of an op in the same module <op>_1, and so on; kind the op.
    An eager model torch.fx cannot trace lists module outputs only and says why in a last line.
    """
    from auditor.models import load_path

    if size is not None and not 1 <= size <= 8192:
        raise UserError(f"--size {size}: image sides are whole numbers of pixels from 1 to 8192")
    # Without --size an ONNX model takes the size its graph declares; torch models declare none (224 then).
    m = load_path(model, (3, size, size) if size else None, trust_pickle=trust_pickle, device=device)
    from auditor.methods.similarity_depth import model_depths

    click.echo(f"# {m.name} ({m.framework}, input {tuple(m.input_shape)}, sha256 {m.sha256[:16]}...)")
    width = max((len(li.name) for li in m.layers()), default=10)
    depths = model_depths(m)  # the similarity check's relative depth: weight layers up to here / all of them
    shape_width = max((len(str(tuple(li.shape))) for li in m.layers()), default=10)
    for li in m.layers():
        click.echo(f"{li.name:<{width}}  {li.kind:<20}  {str(tuple(li.shape)):<{shape_width}}  "
                   f"depth {depths.relative(li.name):.3f}")
    note = getattr(m, "graph_note", "")
    if note:  # an eager model fx cannot trace: say why its functional results are missing
        click.echo(f"# {note}")


@main.command()
@click.argument("results_json", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="default: beside results.json")
@_guard
def render(results_json: Path, out: Path | None) -> None:
    """Re-render the report from RESULTS_JSON without recomputing anything."""
    from auditor.report.render import render_report

    if not results_json.is_file():
        raise UserError(f"results file not found: {results_json}")
    out = out or results_json.parent
    writable_dir(out, "--out")
    with output_lock(out):
        fresh_assets(out)
        rendered = render_report(results_json, out)
    click.echo(f"wrote {rendered.pdf}", err=True)


@main.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fail-on", type=click.Choice(["critical", "major", "minor"]), default="minor", show_default=True)
@device_option
@_guard
def demo(out: Path, seed: int, fail_on: str, device: str) -> None:
    """Build the demo world, train two models, audit them, write DIR/report/report.pdf.

    The demo's candidate carries a planted shortcut, so its audit FAILs by design; the command exits 0 when
    the audit ran (the verdict is printed), and 3 if something broke.
    """
    from auditor.demo import isa

    note = isa.pin()  # before anything imports torch: the same models on every x86-64 host
    from auditor.demo.build import build_demo

    log = _logger()
    if note:
        log(note)
    policy_path = build_demo(out, seed, log)
    code = _audit(policy_path, out / "report", out / "cache", fail_on, quiet=False, device=device)
    if code == EXIT_INTERNAL:
        sys.exit(code)
    click.echo(f"demo done: {out / 'report' / 'report.pdf'} (exit code of `auditor run` would be {code})", err=True)
