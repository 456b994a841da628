"""Bounded memory (issue 18): the store runs models on chunks sized against a budget and streams them to its
cache; the arrays equal the unbounded ones, the files are what np.save writes, and `auditor run` prints its peak."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from auditor import data, memory
from auditor.activations import Store, _NpyWriter
from auditor.cli import main
from auditor.errors import NonFiniteError, UserError
from auditor.models import load_model

PRE = data.Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
LAYERS = ["features.1", "features.4", "fc"]


class Recording:
    """A real model whose passes record how many images each was given (every other attribute is the model's)."""

    def __init__(self, model) -> None:
        self._model = model
        self.sizes: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def activations(self, x, layers):
        self.sizes.append(len(x))
        return self._model.activations(x, layers)

    def layer_grads(self, x, layers, target):
        return self._model.layer_grads(x, layers, target)

    def layer_acts_and_grads(self, x, layers, target):
        self.sizes.append(len(x))
        return self._model.layer_acts_and_grads(x, layers, target)


def _set(tiny_world, folder: str = "classes/a") -> data.ImageSet:
    return data.folder_set("s", tiny_world.root / "world" / folder, PRE)


def test_a_tiny_budget_streams_one_image_at_a_time_and_gives_the_same_arrays(tiny_world, tmp_path):
    model = load_model(tiny_world.script, "auto", (3, 16, 16))
    s = _set(tiny_world)
    whole = Store(tmp_path / "whole", PRE, max_memory=64 * memory.GiB)
    small = Store(tmp_path / "small", PRE, max_memory=4)  # a chunk budget of one byte: one image per chunk
    rec = Recording(model)
    acts_small = small.acts(rec, LAYERS, s)
    assert rec.sizes == [1] * len(s)  # the model never saw more than one image at a time
    acts_whole = whole.acts(model, LAYERS, s)
    for layer in LAYERS:
        assert isinstance(acts_small[layer], np.memmap)  # served from the file, not a copy in memory
        np.testing.assert_allclose(acts_small[layer], acts_whole[layer], rtol=1e-5, atol=1e-6)

    rec.sizes.clear()
    maps_small = small.grad_maps(rec, LAYERS, s, 1)
    assert rec.sizes == [1] * len(s)
    maps_whole = whole.grad_maps(model, LAYERS, s, 1)
    pooled_small = small.pooled_grads_many(model, LAYERS, s, 1)
    pooled_whole = whole.pooled_grads_many(model, LAYERS, s, 1)
    for layer in LAYERS:
        np.testing.assert_allclose(maps_small[layer], maps_whole[layer], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pooled_small[layer], pooled_whole[layer], rtol=1e-5, atol=1e-7)
    # A chunk's size never enters a key: the same files, by name, in both caches.
    names = sorted(p.name for p in (tmp_path / "small").rglob("*.npy"))
    assert names == sorted(p.name for p in (tmp_path / "whole").rglob("*.npy")) and len(names) == 3 * len(LAYERS)


def test_onnx_heads_in_chunks_give_the_same_gradients(tiny_world, tmp_path):
    ox = load_model(tiny_world.onnx, "auto", (3, 16, 16))
    s = _set(tiny_world, "classes/b")
    layer = "/features/features.4/Relu_output_0"
    small = Store(tmp_path / "small", PRE, max_memory=4).pooled_grads(ox, layer, s, 0)
    whole = Store(tmp_path / "whole", PRE, max_memory=64 * memory.GiB).pooled_grads(ox, layer, s, 0)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-6)


def test_released_arrays_are_served_again_without_a_pass(tiny_world, tmp_path):
    model = load_model(tiny_world.script, "auto", (3, 16, 16))
    s = _set(tiny_world)
    store = Store(tmp_path / "c", PRE, max_memory=4)
    first = np.array(store.acts(model, ["features.1"], s)["features.1"])
    store.release()
    again = store.acts(model, ["features.1"], s)["features.1"]
    assert np.array_equal(again, first)
    assert store.stats.forward_passes == 1 and store.stats.from_memory == 1 and store.stats.from_disk == 0


def test_a_file_written_in_chunks_is_what_np_save_writes(tmp_path):
    arr = np.random.default_rng(0).normal(size=(7, 3, 5, 4)).astype(np.float32)
    w = _NpyWriter(tmp_path / "k.npy", len(arr), "x")
    for rows in (slice(0, 3), slice(3, 6), slice(6, 7)):
        w.add(arr[rows])
    served = w.finish()
    np.save(tmp_path / "ref.npy", arr)
    assert (tmp_path / "k.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert np.array_equal(served, arr) and (tmp_path / "k.sha256").is_file()


def test_non_finite_values_in_a_later_chunk_name_every_bad_image_and_leave_no_file(tmp_path):
    arr = np.ones((6, 2), np.float32)
    arr[1, 0] = np.nan
    arr[4, 1] = np.inf
    w = _NpyWriter(tmp_path / "k.npy", len(arr), "model m, layer l, activations of s")
    w.add(arr[:3])
    w.add(arr[3:])
    with pytest.raises(NonFiniteError, match="model m, layer l, activations of s: NaN or infinite values for 2 of 6"):
        w.finish()
    assert list(tmp_path.iterdir()) == []


def test_chunk_planner_and_sizes(tmp_path):
    assert memory.images_per_chunk(100, 1000) == 10
    assert memory.images_per_chunk(5000, 1000) == 1  # never zero
    assert memory.chunk_bytes(4 * memory.GiB) == memory.GiB
    assert memory.parse_size("4GiB") == 4 * memory.GiB
    assert memory.parse_size("512 MiB") == 512 * memory.MiB
    assert memory.parse_size("1.5GB") == 1_500_000_000
    for bad in ("lots", "4 GiBs", "-1GiB", "1MiB"):
        with pytest.raises(UserError, match="--max-memory"):
            memory.parse_size(bad)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    3000000 kB\n")
    assert memory.available_bytes(meminfo) == 3_000_000 * 1024
    assert memory.available_bytes(tmp_path / "missing") is None
    assert memory.DEFAULT_FLOOR <= memory.default_budget() <= memory.DEFAULT_CAP


def _run(tiny_world, tmp_path, *extra: str):
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    (tmp_path / "p.yaml").write_text(tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}))
    return CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out"),
                                     "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra])


def test_run_prints_its_peak_memory_last_and_a_bad_budget_is_one_line(tiny_world, tmp_path):
    res = _run(tiny_world, tmp_path, "--max-memory", "256MiB")
    assert res.exit_code in (0, 1), res.stderr
    last = res.stderr.strip().splitlines()[-1]
    m = re.fullmatch(r"peak memory: (\d+) MiB resident", last)
    assert m and 50 < int(m.group(1)) < 100_000, last
    bad = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out2"),
                                    "--max-memory", "lots"])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "error: --max-memory lots: not a size; give e.g. 4GiB, 512MiB or 3GB"]


def test_the_probe_pastes_in_chunks_what_it_pasted_whole(tiny_world, tmp_path):
    from PIL import Image

    from auditor.methods import artifact
    from auditor.schemas.common import ArtifactSpec

    Image.fromarray(np.full((4, 5, 4), 200, np.uint8), "RGBA").save(tmp_path / "mark.png")
    spec = ArtifactSpec(image="mark.png", position="random")  # positions drawn from one seeded stream
    images = list(_set(tiny_world).paths)
    whole = artifact.make_pairs(images, spec, tmp_path / "mark.png", PRE, 3)
    chunks = list(artifact.pair_chunks(images, spec, tmp_path / "mark.png", PRE, 3, 3))
    assert len(chunks) == -(-len(images) // 3)
    assert np.array_equal(np.concatenate([c.artifact for c in chunks]), whole.artifact)
    assert np.array_equal(np.concatenate([c.neutral for c in chunks]), whole.neutral)


def test_real_scale_benchmark_splits_its_images_and_writes_a_valid_policy(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import real_scale

    from auditor.policy import load_policy

    assert real_scale.sizes(1000).total == 1000 and real_scale.sizes(1000).set_size == 50
    assert real_scale.sizes(4000).total == 4000 and real_scale.sizes(200).set_size == 10
    sz = real_scale.sizes(200)
    real_scale.make_world(tmp_path, sz)
    (tmp_path / "policy.yaml").write_text(real_scale.policy_text(sz))
    policy = load_policy(tmp_path / "policy.yaml")  # the schema: no model is loaded
    assert [c.method for c in policy.checks] == ["artifact_probe", "tcav", "sacv", "invert", "rsvc"]
    counts = [len(list((tmp_path / d).rglob("*.png"))) for d in ("classes", "concepts", "random", "probe")]
    assert counts == [2 * sz.per_class, 3 * sz.set_size, sz.pool, sz.probe] and sum(counts) == 200
    assert real_scale.check_peaks("[  9.0s] check tcav done, peak memory so far 812 MiB") == {"tcav": 812}


def test_forget_drops_read_pages_and_keeps_the_data(tmp_path):
    arr = np.arange(64 * 1024 * 64, dtype=np.float32).reshape(64, 1024, 64)  # 16 MiB
    np.save(tmp_path / "a.npy", arr)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")

    def rss_file_kib() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])
        return 0

    before = rss_file_kib()
    total = float(np.asarray(mapped).sum(dtype=np.float64))  # every page read
    read = rss_file_kib()
    memory.forget(np.asarray(mapped)[3:5])  # a view of the map: the map under it
    after = rss_file_kib()
    assert read - before > 12 * 1024 and read - after > 12 * 1024, (before, read, after)
    assert float(np.asarray(mapped).sum(dtype=np.float64)) == total  # read again from the page cache
    memory.forget(arr)  # an array in memory: nothing happens
