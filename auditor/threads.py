"""Torch's intra-op thread count while a check runs small models (issue 13, item 5).

On a loaded 2-core machine, torch's thread pool made RSVC's many small ops (64x64 inputs, 4x4 to 16x16 maps,
head calls on a few hundred rows) far slower with two threads than with one: each op's work is smaller than the
cost of waking and joining a second thread that has to wait for a core. The numbers behind `SMALL_MODEL_THREADS`
are at `SMALL_MODEL_THREADS` and in the README.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import wraps
from typing import Callable, Iterable, Iterator, TypeVar

import torch

#: A model is small when its input has at most this many pixels per image (the demo's 64 x 64 is 4,096).
SMALL_INPUT_PIXELS: int = 128 * 128
#: Torch threads while a check runs only small models. Measured 2026-12-03 on the demo's RSVC check (seed 0, three
#: classes, cold cache; benchmarks/rsvc_threads.py) on the shared 2-core machine at load 7.5-10.7: one thread 182 s
#: and 99 s, two threads 923 s and 364 s (medians 141 s and 643 s: two threads 4.6x slower, 3.7x-5.1x per pair).
SMALL_MODEL_THREADS: int = 1

T = TypeVar("T")


def is_small(model: object) -> bool:
    """Whether a model's input (its `input_shape`, (C, H, W)) has at most `SMALL_INPUT_PIXELS` pixels."""
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(shape) < 2:
        return False
    h, w = int(shape[-2]), int(shape[-1])
    return h * w <= SMALL_INPUT_PIXELS


def threads_for(models: Iterable[object]) -> int | None:
    """`SMALL_MODEL_THREADS` when every model is small, else None (leave torch's setting alone)."""
    models = list(models)
    if models and all(is_small(m) for m in models):
        return SMALL_MODEL_THREADS
    return None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most `n` torch intra-op threads (None: unchanged); the previous count is restored
    in `finally`, whatever the block raises."""
    previous = torch.get_num_threads()
    try:
        if n is not None and n < previous:
            torch.set_num_threads(n)
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def small_model_threads(run: Callable[..., T]) -> Callable[..., T]:
    """Decorate a check's `run(check, ctx)`: it runs under `threads_for(ctx.models.values())` torch threads."""

    @wraps(run)
    def wrapped(check: object, ctx: object, *args: object, **kwargs: object) -> T:
        with torch_threads(threads_for(getattr(ctx, "models", {}).values())):
            return run(check, ctx, *args, **kwargs)

    return wrapped
