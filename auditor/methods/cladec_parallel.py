"""ClaDec's trainings, two at a time: every decoder and reference auto-encoder a check needs is trained in a forked
worker process with one torch thread, and written to its cache path; the check then reads them all from the cache.

Why processes, one thread each: a decoder's training is a chain of small ops (batches of 32 images of 64 x 64 on
the demo), which two torch threads share badly. Measured 2026-12-03 on the demo models (benchmarks/cladec_cost.py,
one epoch of all 8 trainings): one thread 24.7 s, two threads 53.4 s (load 0.4 -> 3.9). Two single-threaded
trainings side by side use both cores without that cost.

Determinism by construction: a training runs with one torch thread wherever it runs (a worker, or this process
when there is one job, one core, or a worker failed), so the weights do not depend on how many ran at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from auditor import threads
from auditor.methods.cladec_core import Fitted, save_fitted

#: Trainings at once: one per core, at most two (the machine this was measured on has two).
MAX_WORKERS = 2
#: Torch threads per training, in a worker and in this process alike (see the module docstring).
TRAINING_THREADS = 1


@dataclass(frozen=True)
class Job:
    """One training: `train()` gives the fitted decoder that belongs under `path` (its content key)."""

    path: Path
    train: Callable[[], Fitted]
    what: str  # e.g. "candidate features.9 decoder", for the log


def worker_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def train_here(job: Job) -> Fitted:
    """Train `job` in this process, with the thread count the workers use."""
    with threads.torch_threads(TRAINING_THREADS):
        return job.train()


def _work(job: Job) -> None:
    """A worker's whole life: train, save atomically, exit. A failure is one line on stderr; the parent then
    trains the job itself, where an error surfaces as any other would."""
    # One torch thread for the child's whole life, never restored: a forked child must not start an OpenMP team
    # of more than one thread (libgomp's pool belongs to the parent; measured: a clone after the training, back at
    # two threads, hung in gomp_team_barrier_wait_end). With one thread torch runs every op inline.
    torch.set_num_threads(TRAINING_THREADS)
    code = 0
    try:
        save_fitted(job.path, train_here(job))
    except Exception as e:  # noqa: BLE001 (reported, and the parent retries in its own process)
        print(f"cladec: worker for {job.what} failed ({type(e).__name__}: {e}); training it in the main process",
              file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no atexit handlers or finalisers of the parent's objects in the child


def train_missing(jobs: list[Job], log: Callable[[str], None], workers: int | None = None) -> int:
    """Train the jobs whose cache file is absent, `workers` at a time in forked processes; returns how many
    workers finished. With fewer than two such jobs, or one core, it does nothing: `cached` trains them here.

    Fork (not spawn): the child has the parent's arrays and torch modules without pickling them (a TorchScript
    twin does not pickle), and runs only torch and file writes, none of the parent's threads' work."""
    todo: dict[Path, Job] = {}  # one training per cache file: two roles may be one model file (one key)
    for j in jobs:
        if not j.path.exists():
            todo.setdefault(j.path, j)
    workers = worker_count() if workers is None else workers
    if len(todo) < 2 or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    log(f"cladec: training {len(todo)} decoders, {workers} at a time")
    fork = multiprocessing.get_context("fork")
    running: list = []
    done = 0
    queue = list(todo.values())
    while queue or running:
        while queue and len(running) < workers:
            p = fork.Process(target=_work, args=(queue.pop(0),), daemon=True)
            p.start()
            running.append(p)
        ready = multiprocessing.connection.wait([p.sentinel for p in running])
        for p in [p for p in running if p.sentinel in ready]:
            p.join()
            running.remove(p)
            done += p.exitcode == 0
    return done
