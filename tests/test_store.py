"""The activation store: extract once, never stale, and a second run computes nothing."""

import dataclasses
import json
import shutil

import numpy as np

from auditor import data, pipeline, results
from auditor.activations import Store
from auditor.models import load_model
from auditor.policy import load_policy

PRE = data.Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _policy(tiny_world, tmp_path):
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    (tmp_path / "p.yaml").write_text(tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}))
    return load_policy(tmp_path / "p.yaml")


def test_second_run_extracts_nothing_and_results_are_identical(tiny_world, tmp_path):
    policy = _policy(tiny_world, tmp_path)
    first = pipeline.run_audit(policy, tmp_path / "cache", lambda _m: None)
    assert first.stats.extracted > 0 and first.stats.gradients > 0
    second = pipeline.run_audit(policy, tmp_path / "cache", lambda _m: None)
    assert second.stats.extracted == 0 and second.stats.forward_passes == 0 and second.stats.gradients == 0
    assert second.stats.from_disk > 0

    def without_time(r):
        d = results.to_dict(r)
        d["provenance"]["created"] = None
        return json.dumps(d, sort_keys=True)

    assert without_time(first.result) == without_time(second.result)


def test_changed_image_is_not_served_stale(tiny_world, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_world.root / "world" / "concepts" / "red", folder)
    model = load_model(tiny_world.script, "auto", (3, 16, 16))
    store = Store(tmp_path / "cache", PRE)
    before = np.array(store.acts(model, ["features.1"], data.folder_set("s", folder, PRE))["features.1"])
    # overwrite one image with another's bytes: same names, new content
    (folder / "0000.png").write_bytes((folder / "0001.png").read_bytes())
    changed = data.folder_set("s", folder, PRE)
    fresh = Store(tmp_path / "cache", PRE)
    after = np.array(fresh.acts(model, ["features.1"], changed)["features.1"])
    assert fresh.stats.extracted == 1
    assert np.allclose(after[0], after[1]) and not np.allclose(before[0], after[0])


def test_models_never_share_activations(tiny_world, tmp_path):
    import torch

    import tinynet

    other = tmp_path / "other.pt"
    torch.jit.script(tinynet.tiny(7)).save(str(other))
    s = data.folder_set("s", tiny_world.root / "world" / "concepts" / "red", PRE)
    store = Store(tmp_path / "cache", PRE)
    a = np.array(store.acts(load_model(tiny_world.script, "auto", (3, 16, 16)), ["features.1"], s)["features.1"])
    b = np.array(store.acts(load_model(other, "auto", (3, 16, 16)), ["features.1"], s)["features.1"])
    assert store.stats.extracted == 2 and not np.allclose(a, b)


def test_preprocessing_changes_the_key(tiny_world):
    folder = tiny_world.root / "world" / "concepts" / "red"
    other = dataclasses.replace(PRE, mean=(0.4, 0.5, 0.5))
    assert data.folder_set("s", folder, PRE).fingerprint != data.folder_set("s", folder, other).fingerprint
