"""`module:function` factories: importing one, and the sha256 that names the model it builds.

The activation store keys every cached array by the model's sha256, so that hash must change whenever the
model's outputs can: the weights, the factory string, and the code that builds the network. Hashing the weights
alone served a changed model class (another activation, another layer order) the activations cached for the
old one. The code hashed is the source file of the factory's module and of every module that defines a class
in the built network (a factory may build a class it imports from elsewhere), torch's own modules excepted:
they are the framework, not the model, and hashing them would make every torch upgrade a new model.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

from torch import nn

from auditor.errors import UserError


def import_factory(spec: str, search_dir: Path | None) -> tuple[ModuleType, Callable[[], nn.Module]]:
    """The module named by `spec` ("module:function") and its callable; a bad spec is the user's mistake."""
    if ":" not in spec:
        raise UserError(f"factory {spec!r} must read 'module:function' (e.g. mypkg.nets:resnet18)")
    mod_name, fn_name = spec.split(":", 1)
    # A factory module next to the policy/weights is found without installing it.
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # any import failure is the user's module, not ours
        raise UserError(f"factory {spec!r}: cannot import {mod_name}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError(f"factory {spec!r}: {mod_name} has no callable {fn_name!r}")
    return mod, fn


def _is_torch(name: str) -> bool:
    return name == "torch" or name.startswith("torch.")


def _source_bytes(mod: ModuleType) -> bytes:
    """The module's source file as loaded; a module with no file (built in memory) by `inspect.getsource`, and
    one with neither by its name alone (its code is then not covered: nothing on disk to read)."""
    path = getattr(mod, "__file__", None)
    if path and Path(path).is_file():
        return Path(path).read_bytes()
    try:
        return inspect.getsource(mod).encode()
    except (OSError, TypeError):
        return b""


def code_modules(factory_module: ModuleType, built: nn.Module) -> list[ModuleType]:
    """The factory's module and the modules defining the classes of `built`'s submodules, torch's excepted,
    sorted by name (one entry each)."""
    found = {factory_module.__name__: factory_module}
    for m in built.modules():
        mod = sys.modules.get(type(m).__module__)
        if mod is not None and not _is_torch(mod.__name__):
            found.setdefault(mod.__name__, mod)
    return [found[n] for n in sorted(found)]


def factory_sha256(spec: str, factory_module: ModuleType, built: nn.Module, weights: Path | None) -> str:
    """sha256 over the factory string, the source of every module in `code_modules`, and the weights file."""
    h = hashlib.sha256()
    h.update(b"factory\0" + spec.encode() + b"\0")
    for mod in code_modules(factory_module, built):
        source = _source_bytes(mod)
        # Name and length before the bytes: two modules' sources never run together into another pair's.
        h.update(f"module\0{mod.__name__}\0{len(source)}\0".encode() + source)
    if weights is not None:
        h.update(f"weights\0{weights.stat().st_size}\0".encode())
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
