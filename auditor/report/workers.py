"""Figure workers: the figures of a render drawn by worker processes while this process lays out the PDF."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image

from auditor.report.loading import ResultsError
from auditor.report.types import FigureJob, RenderError

# Below this many figures the drawing stays in this process (starting workers costs about a second).
PARALLEL_MIN_FIGURES = 12
FIGURE_WORKERS = 2
# While this process lays out the PDF, the figure workers run at a lower priority: WeasyPrint keeps a core to
# itself (its layout is the longest single chain of work), the workers share what is left and get both cores
# once the layout is done. A mild step, so that on a busy machine they are not starved.
WORKER_NICE = 5


def run_job(job: FigureJob) -> None:
    try:
        job.func(*job.args, **job.kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(
            f"check {job.check_id!r}: malformed findings or details ({type(exc).__name__}: {exc})"
        ) from exc
    if job.size is not None and job.raster is not None and job.raster.is_file():
        with PIL.Image.open(job.raster) as image:  # reads the header only
            if image.size != tuple(job.size):
                # The PDF was laid out for the announced size: a different one would print distorted.
                raise RenderError(f"figure {job.raster.name} of check {job.check_id!r} is {image.size[0]}x"
                                  f"{image.size[1]} pixels, not the {job.size[0]}x{job.size[1]} announced")


def worker_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(FIGURE_WORKERS, cores))


# A worker is a fresh interpreter (not multiprocessing: "spawn" would re-run the caller's main script, "fork"
# would copy WeasyPrint's GLib threads). It lowers its priority by its second argument, reads sys.path and then
# its jobs as pickles from the file named by its first argument, draws them (marking each one done, see
# FigureWorker.drew) and writes back one pickle on stdout: None, or the error that stopped it.
_WORKER = (
    "import os, pickle, sys; f = open(sys.argv[1], 'rb'); sys.path[:] = pickle.load(f); "
    "nice = int(sys.argv[2]); nice and hasattr(os, 'nice') and os.nice(nice); "
    "from auditor.report.workers import _worker_main; _worker_main(f)"
)


def _worker_main(source: Any) -> None:
    jobs = pickle.load(source)
    # An empty file done/<k> says job k is drawn (its files complete): the render may be waiting for it.
    done = Path(source.name).parent / "done"
    source.close()
    error: ResultsError | RenderError | None = None
    try:
        for k, job in enumerate(jobs):
            run_job(job)
            (done / str(k)).touch()
    except (ResultsError, RenderError) as exc:
        error = exc
    pickle.dump(error, sys.stdout.buffer)
    sys.stdout.buffer.flush()


class FigureWorker:
    """A worker process drawing figure jobs (see _WORKER), started at once; ``wait`` joins it.

    ``nice``: how much lower the worker's scheduling priority is (0: the same as this process).
    """

    def __init__(self, jobs: Sequence[FigureJob], nice: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="auditor-figures-")
        folder = Path(self._tmp.name)
        self._done = folder / "done"
        self._done.mkdir()
        self.jobs = tuple(jobs)
        # Jobs go through a file, not a pipe: the caller never waits for the worker to start reading.
        job_file = folder / "jobs.pickle"
        with job_file.open("wb") as f:
            pickle.dump(list(sys.path), f)
            pickle.dump(list(jobs), f)
        # Its output goes to files too: a pipe nobody reads while WeasyPrint works could fill up and stall it.
        self._out = (folder / "out.pickle").open("w+b")
        self._err = (folder / "err.txt").open("w+b")
        self._proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(job_file), str(int(nice))],
                                      stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)

    def drew(self, k: int) -> bool:
        """Whether job ``k`` (of ``jobs``) is drawn."""
        return (self._done / str(k)).exists()

    def finished(self) -> bool:
        """Whether the worker process has ended (done, stopped by an error, or crashed)."""
        return self._proc.poll() is not None

    def wait(self) -> None:
        """Wait for the worker; raises the ResultsError that stopped it, or RenderError when it crashed."""
        try:
            code = self._proc.wait()
            self._out.seek(0)
            out = self._out.read()
            self._err.seek(0)
            err = self._err.read()
        finally:
            self._close()
        if code != 0 or not out:
            raise RenderError(f"a figure worker failed (exit code {code}): {err.decode('utf-8', 'replace')[-2000:]}")
        error = pickle.loads(out)
        if error is not None:
            raise error

    def cancel(self) -> None:
        """Stop the worker (the render failed elsewhere) and remove its files."""
        try:
            self._proc.kill()
            self._proc.wait()
        finally:
            self._close()

    def _close(self) -> None:
        self._out.close()
        self._err.close()
        self._tmp.cleanup()


def draw_figures(jobs: Sequence[FigureJob]) -> None:
    """Draw deferred figures: shared with worker processes when there are many, else all here.

    Every job writes its own files and a figure's bytes depend only on its inputs, so which process draws it
    (and in what order) does not change any output byte.
    """
    workers = worker_count()
    if workers < 2 or len(jobs) < PARALLEL_MIN_FIGURES:
        for job in jobs:
            run_job(job)
        return
    # Job k goes to process k % workers; this process (index 0) draws its share while the others run.
    started = [FigureWorker(jobs[w::workers]) for w in range(1, workers)]
    try:
        for job in jobs[0::workers]:
            run_job(job)
    except BaseException:
        for worker in started:
            worker.cancel()
        raise
    for i, worker in enumerate(started):
        try:
            worker.wait()
        except BaseException:
            for rest in started[i + 1:]:
                rest.cancel()
            raise


def placeholder_png(size: tuple[int, int]) -> bytes:
    """A PNG of ``size`` = (width, height), 8-bit RGB, that has a header and no pixels.

    It stands in for a figure still being drawn while WeasyPrint lays out the PDF: the layout needs only the
    image's size, and WeasyPrint reads an image file's pixels only when it writes the PDF, by which time the
    figure has replaced the file. Were the placeholder ever written into a PDF, decoding it would fail: it can
    never end up in a report as a blank figure.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    width, height = size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


class FigureDrawing:
    """All figure jobs drawn by worker processes while this process lays out the PDF (see render_report).

    A figure whose raster size is announced (FigureJob.size) gets a placeholder_png until it is drawn; the PDF
    waits (wait_for) only for the other figures, which the workers draw first. ``join`` (before the PDF is
    written) waits for every figure and raises the error of a worker that failed.
    """

    def __init__(self, jobs: Sequence[FigureJob], stage: Path, workers: int) -> None:
        self._stage = stage
        for job in jobs:
            if job.size is not None and job.raster is not None:
                job.raster.write_bytes(placeholder_png(job.size))
        order = [job for job in jobs if job.size is None] + [job for job in jobs if job.size is not None]
        self._started = time.perf_counter()
        self._workers: list[FigureWorker] = []
        try:
            for w in range(min(workers, len(order))):
                self._workers.append(FigureWorker(order[w::workers], nice=WORKER_NICE))
        except BaseException:
            self.cancel()
            raise
        self._where = {job.raster.relative_to(stage): (worker, k) for worker in self._workers
                       for k, job in enumerate(worker.jobs) if job.raster is not None and job.size is None}
        # Rasters (relative to the stage, ``assets/x.png``) that do not exist until drawn.
        self.pending = frozenset(self._where)
        self.seconds: float | None = None  # from the start until every figure was drawn (set by join)
        self._joined = False

    def wait_for(self, relative: Path) -> bool:
        """Block until the pending raster ``relative`` is drawn (True); False when it is not one of them."""
        hit = self._where.get(Path(relative))
        if hit is None:
            return False
        worker, k = hit
        while not worker.drew(k):
            if worker.finished():
                self.join()  # raises the error that stopped the worker; without one, every job was drawn
                return True
            time.sleep(0.02)
        return True

    def join(self) -> None:
        """Wait until every figure is drawn; raises the first worker's error (and stops the others)."""
        if self._joined:
            return
        self._joined = True
        for i, worker in enumerate(self._workers):
            try:
                worker.wait()
            except BaseException:
                for rest in self._workers[i + 1:]:
                    rest.cancel()
                raise
        self.seconds = time.perf_counter() - self._started

    def cancel(self) -> None:
        """Stop every worker (the render failed elsewhere)."""
        if self._joined:
            return
        self._joined = True
        for worker in self._workers:
            worker.cancel()


# ---------------------------------------------------------------------------------------------------------------
# HTML
