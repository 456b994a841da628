"""ClaDec's trainings in forked workers (cladec_parallel): the same weights as a training in this process, one
training per cache file, and a worker's failure left to the main process, where it is raised as usual."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tinynet  # noqa: E402

from auditor import data  # noqa: E402
from auditor.methods import cladec_core as cc  # noqa: E402
from auditor.methods.cladec_parallel import Job, train_here, train_missing  # noqa: E402

PRE = data.Preprocessing((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FAST = cc.Settings(epochs=2, batch_size=16, seed=5)


def _jobs(tmp_path: Path, n: int) -> list[Job]:
    rng = np.random.default_rng(0)
    x01 = rng.random((32, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, 32)  # the tiny net has two classes
    net = cc.freeze(tinynet.tiny(0))
    with torch.no_grad():
        acts = net.features(cc.to_model(torch.from_numpy(x01), PRE)).numpy()
    return [Job(tmp_path / f"job{i}.pt", partial(cc.train_cladec, acts, x01, labels, net, PRE,
                                                 cc.Settings(epochs=2, batch_size=16, seed=5 + i), lambda _m: None),
                f"job {i}") for i in range(n)]


def test_a_worker_trains_the_same_weights_as_this_process(tmp_path):
    jobs = _jobs(tmp_path, 3)
    assert train_missing(jobs, lambda _m: None, workers=2) == 3
    for job in jobs:
        from_worker = cc.load_fitted(job.path, None, lambda _m: None)
        here = train_here(job)
        assert from_worker is not None and from_worker.stats.cached
        a, b = cc.tensors(from_worker.decoder), cc.tensors(here.decoder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert train_missing(jobs, lambda _m: None, workers=2) == 0  # all cached: no worker starts


def test_one_training_per_cache_file_and_none_for_a_single_job(tmp_path):
    job = _jobs(tmp_path, 1)[0]
    logs: list[str] = []
    assert train_missing([job, job], logs.append, workers=2) == 0 and not job.path.exists()  # `cached` trains it
    other = Job(tmp_path / "other.pt", job.train, "other")
    assert train_missing([job, other, job], logs.append, workers=2) == 2
    assert logs == ["cladec: training 2 decoders, 2 at a time"]


def _fails() -> cc.Fitted:
    raise ValueError("no images")


def test_a_failed_worker_leaves_no_file_and_the_error_surfaces_here(tmp_path, capfd):
    good = _jobs(tmp_path, 1)[0]
    bad = Job(tmp_path / "bad.pt", _fails, "bad job")
    assert train_missing([bad, good], lambda _m: None, workers=2) == 1
    assert good.path.exists() and not bad.path.exists()
    assert "cladec: worker for bad job failed (ValueError: no images)" in capfd.readouterr().err
    with pytest.raises(ValueError, match="no images"):
        cc.cached(bad.path, lambda: train_here(bad), lambda _m: None)
