"""Loading a torch model as its policy entry says: a `module:factory` (+ state_dict or safetensors weights), a
`torch.export` program (.pt2), a TorchScript file, or (trusted only) a pickled nn.Module; `load_torch` returns the
adapter of torch_model.py that serves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from auditor.errors import UserError
from auditor.models.factory import factory_sha256, import_factory
from auditor.models.torch_model import ModuleModel, ScriptModel


def file_sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()



@dataclass(frozen=True)
class TorchSpec:
    path: Path | None  # weights, TorchScript or .pt2 file
    factory: str | None  # "package.module:function" building the nn.Module
    trust_pickle: bool
    input_shape: tuple[int, ...]
    name: str
    device: str = "cpu"  # "cpu" | "cuda" (auditor.models.device resolves --device)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state_dict (a dict of tensors), found {type(state).__name__}")
    return state


def load_torch(spec: TorchSpec, search_dir: Path | None = None):
    """Load a torch model as the spec says.

    Returns a `ScriptModel` for TorchScript files and a `ModuleModel` otherwise.
    """
    path = spec.path
    if path is not None and not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        if spec.factory:
            factory_module, factory = import_factory(spec.factory, search_dir)
            module = factory()
            if not isinstance(module, nn.Module):
                raise UserError(f"factory {spec.factory!r} returned {type(module).__name__}, not an nn.Module")
            # The code that builds the network is hashed with the weights (factory.py says why).
            sha = factory_sha256(spec.factory, factory_module, module, path)
            if path is not None:
                missing, unexpected = module.load_state_dict(_load_state(path), strict=False)
                if missing or unexpected:
                    raise UserError(
                        f"{path}: weights do not fit {spec.factory}: missing {list(missing)[:3]}, "
                        f"unexpected {list(unexpected)[:3]}"
                    )
            return ModuleModel(module, spec.name, sha, "torch", spec.input_shape, spec.device)
        assert path is not None
        sha = file_sha256([path])
        if path.suffix == ".pt2":
            program = torch.export.load(str(path))
            return ModuleModel(program.module(), spec.name, sha, "torch-export", spec.input_shape, spec.device)
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
            return ScriptModel(scripted, spec.name, sha, spec.input_shape, spec.device)
        except RuntimeError as script_error:
            if not spec.trust_pickle:
                raise UserError(
                    f"{path}: not a TorchScript file ({str(script_error).splitlines()[0]}); a state_dict needs "
                    "`factory: module:function`, and a pickled nn.Module needs `trust_pickle: true` "
                    "(it runs code from the file)"
                ) from script_error
        module = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(module, nn.Module):
            raise UserError(f"{path}: the pickle holds {type(module).__name__}, not an nn.Module")
        return ModuleModel(module, spec.name, sha, "torch-pickle", spec.input_shape, spec.device)
    except UserError:
        raise
    except Exception as e:  # a model that does not load is a user input problem: one line, exit 2
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path or spec.factory}: cannot load torch model: {first}") from e
