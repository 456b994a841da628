"""Methods read cached sets a block of images at a time (issue 18): TCAV's pooled features, SACV's position sums,
held-out accuracy and statistics give what the whole arrays give, and a pass over a memory-mapped set holds one
block of its pages, not the set."""

from __future__ import annotations

import numpy as np
import pytest

from auditor import memory
from auditor.methods import spatial
from auditor.methods.cav import features

N = 70  # over two blocks of memory.IMAGE_BLOCK (32), the last one partial


def rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


def mapped(tmp_path, name: str, arr: np.ndarray) -> np.ndarray:
    np.save(tmp_path / f"{name}.npy", arr)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


def test_row_blocks_hold_one_block_of_a_mapped_set(tmp_path):
    arr = np.random.default_rng(0).random((N, 256, 16, 16), dtype=np.float32)  # 256 KiB an image, 17.5 MiB
    m = mapped(tmp_path, "a", arr)
    block_kib = memory.IMAGE_BLOCK * arr[0].nbytes // 1024
    before = rss_file_kib()
    seen, grown = [], []
    for start, block in memory.row_blocks(np.asarray(m)):
        assert not isinstance(block, np.memmap) and block.base is None  # a copy, not a view of the map
        seen.append(block)
        grown.append(rss_file_kib() - before)
        assert start == sum(len(b) for b in seen[:-1])
    np.testing.assert_array_equal(np.concatenate(seen), arr)
    # Each block's pages were read and then forgotten: never more than one block resident (+ a page of slack).
    assert max(grown) < block_kib + 64, (grown, block_kib)
    rows = np.array([5, 69, 0, 33, 32, 7] * 7)
    got = np.concatenate([b for _, b in memory.row_blocks(m, rows)])
    np.testing.assert_array_equal(got, arr[rows])


def test_pooled_features_of_rows_are_the_rows_features(tmp_path):
    arr = np.random.default_rng(1).standard_normal((N, 8, 5, 5)).astype(np.float32)
    m = mapped(tmp_path, "a", arr)
    rows = np.sort(np.random.default_rng(2).permutation(N)[:45])
    slow = np.stack([[arr[i, c].mean() for c in range(8)] for i in rows])
    np.testing.assert_allclose(features(np.asarray(m), "pooled", rows), slow, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(features(np.asarray(m), "pooled", rows), features(arr[rows], "pooled"))
    np.testing.assert_array_equal(features(np.asarray(m), "flatten", rows), arr[rows].reshape(len(rows), -1))
    np.testing.assert_array_equal(features(np.asarray(m), "pooled"), arr.mean(axis=(2, 3)))


def test_position_sums_and_balanced_accuracy_of_rows_match_a_loop(tmp_path):
    rng = np.random.default_rng(3)
    concept, random = rng.random((N, 4, 3, 3)).astype(np.float32), rng.random((40, 4, 3, 3)).astype(np.float32)
    mc, mr = mapped(tmp_path, "c", concept), mapped(tmp_path, "r", random)
    rows = np.sort(rng.permutation(N)[:50])
    where = rng.random((50, 3, 3)) > 0.5
    sums = spatial.position_sums(np.asarray(mc), where, rows)
    for j, i in enumerate(rows):
        slow = sum(concept[i, :, h, w].astype(np.float64) for h in range(3) for w in range(3) if where[j, h, w])
        np.testing.assert_allclose(sums.sums[j], slow if np.ndim(slow) else np.zeros(4), rtol=1e-12)
        assert sums.counts[j] == where[j].sum()
    v = rng.standard_normal(4)
    v /= np.linalg.norm(v)
    b = -float(v @ concept.mean(axis=(0, 2, 3)))
    r_rows = np.arange(3, 40, 2)
    got = spatial.balanced_accuracy(np.asarray(mc), rows, where, np.asarray(mr), r_rows, v, b)
    hits = [v @ concept[i, :, h, w] + b > 0 for j, i in enumerate(rows) for h in range(3) for w in range(3)
            if where[j, h, w]]
    fired = [v @ random[i, :, h, w] + b > 0 for i in r_rows for h in range(3) for w in range(3)]
    assert got == pytest.approx((np.mean(hits) + 1 - np.mean(fired)) / 2, abs=1e-12)


def test_spatial_stats_over_blocks_are_the_whole_sets(tmp_path):
    rng = np.random.default_rng(4)
    acts = rng.random((N, 6, 4, 4)).astype(np.float32)
    grads = rng.standard_normal((N, 6, 4, 4)).astype(np.float32)
    cavs = rng.standard_normal((5, 6))
    cavs /= np.linalg.norm(cavs, axis=1, keepdims=True)
    offsets = rng.standard_normal(5) - 1.0
    score, cosine = spatial.spatial_stats(np.asarray(mapped(tmp_path, "a", acts)),
                                          np.asarray(mapped(tmp_path, "g", grads)), cavs, offsets, chunk=2)
    # The whole-set formula, written out on arrays in memory.
    positive = np.einsum("nchw,kc->nkhw", acts.astype(np.float64), cavs) + offsets[None, :, None, None] > 0
    s = (np.einsum("nchw,kc->nkhw", grads.astype(np.float64), cavs) * positive).sum(axis=(2, 3))
    denom = np.linalg.norm(grads.reshape(N, -1).astype(np.float64), axis=1)[:, None] * np.sqrt(positive.sum((2, 3)))
    np.testing.assert_allclose(score, (s > 0).mean(axis=0))
    np.testing.assert_allclose(cosine, np.where(denom > 0, s / np.where(denom > 0, denom, 1), 0).mean(axis=0),
                               rtol=1e-5, atol=1e-6)


def test_lazy_sets_are_made_when_indexed_and_equal_the_list():
    from auditor.methods.tcav import SetsOnDemand

    pool = np.arange(40.0).reshape(20, 2)
    rows = [np.array([1, 3]), np.array([0, 19]), np.array([5, 6])]
    made = []
    lazy = SetsOnDemand([pool[:2]], lambda r: made.append(r) or pool[r], rows)
    eager = [pool[:2]] + [pool[r] for r in rows]
    assert len(lazy) == 4 and made == []  # nothing copied until asked
    for got, want in zip(lazy[1:3], eager[1:3]):
        np.testing.assert_array_equal(got, want)
    assert len(made) == 2
    np.testing.assert_array_equal(lazy[-1], eager[-1])
    np.testing.assert_array_equal(lazy[0], eager[0])
    with pytest.raises(IndexError):
        lazy[4]


def test_rsvc_patches_made_a_chunk_at_a_time_are_the_whole_sets(tmp_path):
    from PIL import Image

    from auditor import data
    from auditor.methods import rsvc_core as core
    from auditor.methods.rsvc import PatchSet
    from auditor.methods.rsvc_images import Clock

    rng = np.random.default_rng(5)
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(paths[-1])
    pre = data.Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    grid = core.patch_grid(pre.size, 0.5, 0.8)
    ps = PatchSet(data.image_set("p", paths, pre), grid, pre.size, pre, Clock())
    whole = core.cut_patches(data.load(ps.images, pre), grid, pre.size)  # every image at once, as before
    assert len(ps) == len(whole) == 7 * len(grid)
    for s in (slice(0, 5), slice(3, 11), slice(len(grid), 2 * len(grid)), slice(10, None), slice(None)):
        np.testing.assert_array_equal(ps.rows(s), whole[s])
    np.testing.assert_array_equal(ps.patches(), whole)


def test_head_agreement_by_blocks_is_the_whole_formula():
    import torch
    from torch import nn

    from auditor.methods import rsvc_core as core
    from auditor.methods.rsvc_grad import broadcast, head_agreement
    from auditor.models.torch_model import ModuleModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    model = ModuleModel(net, "n", "0", "torch", (3, 6, 6))
    x = np.random.default_rng(6).normal(size=(N, 3, 6, 6)).astype(np.float32)
    full = model.activations(x, ["1"])["1"]
    means = full.mean(axis=(2, 3))
    got = head_agreement(model, "1", full, means, x, 2)
    head = model.head("1")
    real = core.log_softmax(head.logits(full, x).astype(np.float64))
    flat = core.log_softmax(head.logits(broadcast(means, np.eye(4), (4, 6, 6)), x).astype(np.float64))
    assert got["top1_agreement"] == pytest.approx(float((real.argmax(1) == flat.argmax(1)).mean()))
    assert got["mean_abs_logp_diff"] == pytest.approx(float(np.abs(real[:, 2] - flat[:, 2]).mean()), rel=1e-6)
    assert 0 < got["mean_abs_logp_diff"]  # the flattened head is not the real one here (no pooling first)
