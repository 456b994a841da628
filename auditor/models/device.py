"""`--device cpu|cuda|auto`: where torch models and ONNX sessions run.

`cpu` (the default) gives the same numbers on every machine. `cuda` runs torch models on the first CUDA device and
ONNX models with onnxruntime's CUDAExecutionProvider first (CPU for the ops it lacks); it is the user's mistake
when either is missing for a model the policy loads. `auto` takes CUDA where torch (for torch models) or
onnxruntime (for ONNX models) has it, else the CPU. Numpy goes in and comes out either way; results differ from
the CPU's by float rounding only (tests/test_device.py), and activations computed on a GPU are cached apart from
the CPU's (`cache_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from auditor.errors import UserError

DEVICES = ("cpu", "cuda", "auto")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def _check_choice(choice: str) -> None:
    if choice not in DEVICES:
        raise UserError(f"--device {choice!r}: choose one of {', '.join(DEVICES)}")


def torch_device(choice: str) -> str:
    """"cpu" or "cuda": where a torch model runs under `choice`."""
    _check_choice(choice)
    if choice == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        raise UserError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device here; use --device cpu or auto"
        )
    return "cpu"


def onnx_providers(choice: str) -> list[str]:
    """onnxruntime's execution providers, in order of preference, for an ONNX model under `choice`."""
    _check_choice(choice)
    if choice == "cpu":
        return [CPU_PROVIDER]
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if choice == "cuda":
        raise UserError(
            f"--device cuda: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (install onnxruntime-gpu); "
            "use --device cpu or auto"
        )
    return [CPU_PROVIDER]


def check_cuda(frameworks: Iterable[str]) -> None:
    """`--device cuda` before any model loads: one line when torch or onnxruntime, whichever the models need,
    has no CUDA."""
    kinds = set(frameworks)
    if "onnx" in kinds:
        onnx_providers("cuda")
    if kinds - {"onnx"}:
        torch_device("cuda")


def cache_dir(root: Path, devices: Iterable[str]) -> Path:
    """The cache folder for models run on `devices`: `root` when all run on the CPU (caches written before
    `--device` existed stay valid), else `root/device-cuda`. A GPU's convolutions round differently from the
    CPU's (about 1e-6 relative), so a cache filled on one must not be read by a run on the other: an audit's
    numbers would then depend on which run came first."""
    others = sorted(set(devices) - {"cpu"})
    return root if not others else root / f"device-{'-'.join(others)}"
