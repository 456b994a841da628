"""The demo's arithmetic pinned to one instruction set, so that its models and numbers are the same on every x86-64
host (measured 2026-12-03: trained natively on an AVX-512/AMX host, the demo models differed by float rounding
from those of the hosts its expectations were measured on, enough to move borderline results: RSVC's requirement on
the reference FAILed, and a texture's TCAV cell at the reference's features.7 fell from CAV accuracy 0.61 to 0.53,
under the 0.6 line. Ten epochs of training turn a last-bit difference into a different network).

torch's own vectorised kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and MKL's BLAS
(MKL_CBWR, conditional numerical reproducibility) each pick code by the CPU; all three are held at AVX2, which
every x86-64 host of the last decade has. They are read when torch, oneDNN and MKL start, so `pin()` must run
before torch is imported: the demo command calls it first.
"""

from __future__ import annotations

import os
import sys

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin() -> str | None:
    """Set PINNED in this process's environment (and its children's); a line saying why it could not take
    effect (torch already imported), or None."""
    os.environ.update(PINNED)
    if "torch" in sys.modules:
        return ("note: torch was imported before the demo pinned its instruction set (auditor/demo/isa.py); its "
                "numbers may differ from the documented ones by float rounding")
    return None
