"""The memory budget of a run: `--max-memory`, its default, the chunk planner, and the peak line.

The store runs models on chunks of images and streams each chunk's outputs to its disk cache, so what a run holds
at once is one chunk (its outputs and the model's working memory for it) plus what the methods hold. A quarter of
the budget goes to a chunk; the rest is for the process itself (torch and the models' weights, ~0.6 GiB for two
ResNet-50s) and the methods' arrays.

The model's working memory per image is not known before it runs; it is taken as a multiple of the input's size,
measured on a ResNet-50 at 224 px (benchmarks/resnet50_like.py, torch on CPU): a forward+backward pass held
~125 MiB per image (2.3 GiB at 16 images over a 0.3 GiB process), 210 x the input's 0.57 MiB. A forward pass frees
each block's tensors as it goes; its high water mark is a few block outputs per image.
"""

from __future__ import annotations

import mmap
import re
import resource
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from auditor.errors import UserError

MiB = 1 << 20
GiB = 1 << 30

# The default budget: half the memory the machine has available when the run starts, at most DEFAULT_CAP (a larger
# chunk buys no speed: the model already runs in full batches) and at least DEFAULT_FLOOR.
DEFAULT_CAP = 4 * GiB
DEFAULT_FLOOR = 512 * MiB
CHUNK_SHARE = 4  # a chunk may use 1 / CHUNK_SHARE of the budget

# Working memory of the model per image, as a multiple of the input's bytes (see the top).
GRAD_WORK = 256
FORWARD_WORK = 32

# Images per block where a method walks a cached set (32 images of a 1024 x 14 x 14 layer: 26 MB as float32).
IMAGE_BLOCK = 32

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": MiB,
          "g": 1000**3, "gb": 1000**3, "gib": GiB, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """'4GiB', '512MiB', '2.5GB', '3000000000' -> bytes; a UserError for anything else or under 64 MiB."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise UserError(f"--max-memory {text}: not a size; give e.g. 4GiB, 512MiB or 3GB")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < 64 * MiB:
        raise UserError(f"--max-memory {text}: under 64 MiB; a run needs more than that (e.g. 1GiB)")
    return size


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable of the machine (Linux), or None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_budget() -> int:
    """Half of MemAvailable, within [DEFAULT_FLOOR, DEFAULT_CAP]; DEFAULT_CAP where MemAvailable is unknown."""
    free = available_bytes()
    if free is None:
        return DEFAULT_CAP
    return max(DEFAULT_FLOOR, min(DEFAULT_CAP, free // 2))


def chunk_bytes(budget: int) -> int:
    return max(1, budget // CHUNK_SHARE)


def images_per_chunk(bytes_per_image: int, budget_bytes: int) -> int:
    """How many images fit `budget_bytes` at `bytes_per_image` each (at least one)."""
    return max(1, budget_bytes // max(1, bytes_per_image))


def peak_rss_mib() -> float:
    """The process's peak resident set so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


def format_size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def forget(arr: object) -> None:
    """Drop the pages of the memory map under `arr` (a cached array the store served, or a view of one) from the
    process's resident set, once a reader is done with them: a read page of a mapped file counts in the resident
    set while the map lives, so a check that reads every set of a layer would hold them all. The pages stay in
    the page cache (a later read maps them again, without disk I/O while memory allows); the data is read-only,
    so nothing is lost. A no-op for an array in memory."""
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    mapped = getattr(base, "_mmap", None)
    if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass  # a closed map, or a platform without it: the pages are the kernel's to reclaim then


def row_blocks(arr: np.ndarray, rows: np.ndarray | None = None,
               block: int = IMAGE_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(position, in-memory copy) of consecutive blocks of `arr`'s first axis, or of its `rows` in their order
    (position counts within `rows`), forgetting the mapped pages of `arr` after each block: a pass over a cached
    set holds one block of it at a time, whatever the set's size. Measured on benchmarks/real_scale.py at 800
    images: reading concept rows by fancy indexing and SACV's statistics over whole class sets kept every page of
    those sets resident (+0.5 GiB each against 200 images)."""
    n = len(arr) if rows is None else len(rows)
    for start in range(0, n, block):
        idx = slice(start, start + block) if rows is None else np.asarray(rows[start : start + block])
        out = np.array(arr[idx])
        forget(arr)
        yield start, out
