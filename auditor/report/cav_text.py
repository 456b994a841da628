"""What the TCAV and SACV sections share: the limits of their significance tests and the CAV accuracy default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Measured on the demo (benchmarks/stability.py, docs/measurements.md): another seed and 200-image sets changed 8 of 16 verdicts.
STABILITY_NOTE = (
    "Verdicts depend on the random sets: where the random-vs-random scores sit near 0 and 1 (a tall grey box: "
    "the class gradients point one way, so every direction scores about 0 or 1), the random mean the concept "
    "is tested against is estimated from few effective samples, and a rerun with other random sets or set "
    "sizes can change the verdict. Read such cells with the causal probe."
)
# The exchangeability test's own limits (docs/significance.md): what its null is, and what it does not cover.
EXCHANGEABLE_NOTE = (
    "Significance here means the concept images differ from random images of the pool as the class logit's "
    "sensitivity sees them (pseudo-concepts drawn from the pool, scored alike): a pool unlike the images the "
    "model meets, or one that contains the concept, changes what \u201crandom\u201d means. The smallest p is "
    "1/(M+1); a capped M can make significance unattainable (a note says so)."
)
TCAV_CLAIM = (
    "A significant TCAV score says the class logit is locally sensitive to the concept direction at that layer; "
    "it does not show that the model relies on the concept. Reliance is decided by causal probes (pasting the "
    "concept onto images), reported separately where available. "
)


def significance_note(settings: Mapping[str, Any]) -> str:
    """The limits of the check's test: the exchangeability test's, or Welch's dependence on the random sets."""
    return EXCHANGEABLE_NOTE if settings.get("test_name") == "exchangeable" else STABILITY_NOTE


# METHODS.md, TCAV step 4: mean held-out CAV accuracy below this means "not learned at this layer".
DEFAULT_MIN_CAV_ACCURACY = 0.6
