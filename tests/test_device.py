"""`--device cpu|cuda|auto`: the same audit on every choice (here, on the CPU: identical; on a GPU: within
tolerance, `@pytest.mark.gpu`, skipped where torch has no CUDA), a missing CUDA is one line and exit 2, and the
device is recorded in results.json and keeps GPU activations out of the CPU's cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tinynet
from auditor.errors import UserError
from auditor.models import device as devices
from auditor.models import load_model

SHAPE = (3, 16, 16)
CUDA = torch.cuda.is_available()
ORT_CUDA = devices.CUDA_PROVIDER in ort.get_available_providers()


def _run(policy: Path, out: Path, cache: Path, device: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "auditor", "run", str(policy), "--out", str(out), "--cache-dir", str(cache),
         "--device", device, "--quiet"],
        capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "0"},
    )


def _results(out: Path) -> dict:
    d = json.loads((out / "results.json").read_text())
    d["provenance"].pop("command")  # the only field that names the flag
    return d


@pytest.fixture
def policy(tiny_world, tmp_path) -> Path:
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    models = {"candidate": str(tiny_world.script), "reference": str(tiny_world.onnx)}
    layers = {"candidate": ["features.1", "features.4"],
              "reference": ["/features/features.1/Relu_output_0", "/features/features.4/Relu_output_0"]}
    path = tmp_path / "p.yaml"
    path.write_text(tiny_world.policy_text(models, layers=layers))
    return path


@pytest.mark.skipif(CUDA or ORT_CUDA, reason="auto takes the GPU here; test_gpu_audit_matches_the_cpu compares")
def test_device_cpu_and_auto_give_identical_results(policy, tmp_path):
    runs = {}
    for device in ("cpu", "auto"):
        res = _run(policy, tmp_path / f"out-{device}", tmp_path / f"cache-{device}", device)
        assert res.returncode in (0, 1), res.stderr
        runs[device] = _results(tmp_path / f"out-{device}")
    assert runs["cpu"] == runs["auto"]
    assert [m["device"] for m in runs["cpu"]["provenance"]["models"]] == ["cpu", "cpu"]
    assert runs["cpu"]["checks"][0]["status"] in ("PASS", "FAIL")  # the check ran: there was something to compare


@pytest.mark.skipif(CUDA, reason="torch has CUDA here")
def test_device_cuda_without_cuda_is_one_line_and_exit_2(tiny_world, tmp_path):
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    (tmp_path / "p.yaml").write_text(tiny_world.policy_text())  # two TorchScript models: one line, not two
    res = _run(tmp_path / "p.yaml", tmp_path / "out", tmp_path / "cache", "cuda")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda" in lines[0] and "torch" in lines[0], res.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.skipif(ORT_CUDA, reason="onnxruntime has CUDA here")
def test_device_cuda_for_onnx_without_the_cuda_provider_is_one_line_and_exit_2(tiny_world, tmp_path):
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    models = {"candidate": str(tiny_world.onnx), "reference": str(tiny_world.onnx)}
    layers = {r: ["/features/features.1/Relu_output_0"] for r in models}
    (tmp_path / "p.yaml").write_text(tiny_world.policy_text(models, layers=layers))
    res = subprocess.run([sys.executable, "-m", "auditor", "validate", str(tmp_path / "p.yaml"), "--device", "cuda"],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDAExecutionProvider" in lines[0], res.stderr


def test_auto_resolves_to_what_this_machine_has(tiny_world):
    assert load_model(tiny_world.script, "auto", SHAPE, device="auto").device == ("cuda" if CUDA else "cpu")
    assert load_model(tiny_world.onnx, "auto", SHAPE, device="auto").device == ("cuda" if ORT_CUDA else "cpu")
    assert load_model(tiny_world.onnx, "auto", SHAPE, device="cpu").device == "cpu"


def test_gpu_activations_are_cached_apart_from_the_cpus(tmp_path):
    assert devices.cache_dir(tmp_path, ["cpu", "cpu"]) == tmp_path  # caches written before --device stay valid
    assert devices.cache_dir(tmp_path, ["cuda", "cpu"]) == tmp_path / "device-cuda"
    with pytest.raises(UserError, match="choose one of cpu, cuda, auto"):
        devices.torch_device("gpu")


# ------------------------------------------------------------------------------------------------ on a GPU


def _compare(cpu, gpu, layers: list[str], x: np.ndarray) -> None:
    """Same logits, activations, heads and layer gradients on both devices, within float rounding: cuDNN's
    convolutions run in TF32 by default on Ampere and later GPUs (10-bit mantissa, about 1e-3 relative)."""
    def close(a: np.ndarray, b: np.ndarray) -> None:
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-3 * (1 + float(np.abs(a).max())))

    close(cpu.predict(x), gpu.predict(x))
    a_cpu, a_gpu = cpu.activations(x, layers), gpu.activations(x, layers)
    for layer in layers:
        close(a_cpu[layer], a_gpu[layer])
        assert isinstance(a_gpu[layer], np.ndarray) and a_gpu[layer].dtype == np.float32
        close(cpu.head(layer).logits(a_cpu[layer], x), gpu.head(layer).logits(a_cpu[layer], x))
        close(cpu.head(layer).grad(a_cpu[layer], x, 1), gpu.head(layer).grad(a_cpu[layer], x, 1))
    if hasattr(cpu, "layer_grads"):
        g_cpu, g_gpu = cpu.layer_grads(x, layers, 0), gpu.layer_grads(x, layers, 0)
        for layer in layers:
            close(g_cpu[layer], g_gpu[layer])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="torch has no CUDA device here")
def test_gpu_torch_models_match_the_cpu(tiny_world, tmp_path):
    from auditor.models.torch_model import ModuleModel

    x = np.random.default_rng(0).normal(size=(70, *SHAPE)).astype(np.float32)
    cpu, gpu = (ModuleModel(tinynet.skip(0), "s", "0", "torch", SHAPE, device=d) for d in ("cpu", "cuda"))
    assert gpu.device == "cuda" and next(gpu.torch_module.parameters()).device.type == "cpu"  # ClaDec's copy
    _compare(cpu, gpu, ["conv1", "add", "relu", "act2"], x)  # module outputs and functional results
    cpu, gpu = (load_model(tiny_world.script, "auto", SHAPE, device=d) for d in ("cpu", "cuda"))
    _compare(cpu, gpu, ["features.1", "features.4"], x)


@pytest.mark.gpu
@pytest.mark.skipif(not ORT_CUDA, reason="onnxruntime has no CUDAExecutionProvider here")
def test_gpu_onnx_session_matches_the_cpu(tiny_world):
    x = np.random.default_rng(0).normal(size=(20, *SHAPE)).astype(np.float32)
    cpu, gpu = (load_model(tiny_world.onnx, "auto", SHAPE, device=d) for d in ("cpu", "cuda"))
    assert gpu.device == "cuda"
    _compare(cpu, gpu, ["/features/features.1/Relu_output_0"], x)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="torch has no CUDA device here")
def test_gpu_audit_matches_the_cpu(policy, tmp_path):
    runs = {}
    for device in ("cpu", "auto"):
        res = _run(policy, tmp_path / f"out-{device}", tmp_path / "cache", device)  # one cache folder for both
        assert res.returncode in (0, 1), res.stderr
        runs[device] = _results(tmp_path / f"out-{device}")
    assert runs["auto"]["provenance"]["models"][0]["device"] == "cuda"
    assert (tmp_path / "cache" / "device-cuda").is_dir()  # the GPU run did not read the CPU run's activations
    assert runs["auto"]["verdict"] == runs["cpu"]["verdict"]
    for c_cpu, c_gpu in zip(runs["cpu"]["checks"], runs["auto"]["checks"]):
        assert c_cpu["status"] == c_gpu["status"]
        for f_cpu, f_gpu in zip(c_cpu["findings"], c_gpu["findings"]):
            for key, value in f_cpu.items():
                if isinstance(value, float):
                    assert abs(f_gpu[key] - value) <= 0.02, (key, value, f_gpu[key])
