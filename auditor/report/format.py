"""Format filters for the report: numbers, p-values, dates, names, and reading order."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup


def fmt_num(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def fmt_pm(value: Any, spread: Any, digits: int = 2) -> str:
    """``value ± spread``; just the value when the spread is unknown."""
    if value is None:
        return "—"
    if spread is None:
        return fmt_num(value, digits)
    return f"{fmt_num(value, digits)} ± {fmt_num(spread, digits)}"


def fmt_p(p: Any) -> str:
    """A p-value in 3 significant digits; scientific below 0.001."""
    if p is None:
        return "—"
    p = float(p)
    if p == 0.0:
        return "0"
    if p < 1e-3:
        mantissa, exponent = f"{p:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"  # 3.20e-6, not 3.20e-06: narrower columns, same value
    return f"{p:.3g}"


def fmt_value(value: Any) -> str:
    """Any JSON value for a generic table cell."""
    if value is None or isinstance(value, int):  # bool is an int: "yes"/"no"
        return fmt_num(value)
    if isinstance(value, float):
        if value == 0.0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}"
        return f"{value:.2e}"
    if isinstance(value, str):
        return value
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 400 else text[:400] + " … (full value in results.json)"


def fmt_share(value: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal (``57.5 %``); None as an em dash."""
    if value is None:
        return "—"
    return f"{100 * float(value):.1f} %"


def break_at_underscores(text: Any) -> Markup:
    """``text`` escaped, with a line-break opportunity after every underscore (``artifact_<wbr>probe``)."""
    return Markup("_<wbr>").join(Markup.escape(str(text)).split("_"))


def parse_created(created: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    # results.py documents `created` as UTC; a naive stamp is read as such.
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def fmt_date(created: str) -> str:
    """The audit's date for print (``2025-11-23 13:21 UTC``); the raw text when it is not ISO 8601."""
    dt = parse_created(created)
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else created


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


# ---------------------------------------------------------------------------------------------------------------
# Reading results.json


# Free text (a title, a description) longer than this is cut where it repeats (running headers, the summary, CI
# outputs) and shown whole once: a 200,000-character title on every page made WeasyPrint lay out for minutes.
CLIP = 160


def clip(text: str, limit: int = CLIP) -> str:
    """`text` on one line, at most `limit` characters (cut with an ellipsis)."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


def ordered(first: Sequence[str], seen: Sequence[str]) -> list[str]:
    out = [x for x in first if x in seen]
    return out + [x for x in dict.fromkeys(seen) if x not in out]


_CORNERS = {"top-left", "top-right", "bottom-left", "bottom-right"}


def placement_words(artifact: Mapping[str, Any]) -> str:
    """How the artifact was pasted, in words: where, how large, how opaque."""
    pos = str(artifact.get("position", ""))
    if pos == "random":
        where = "at a random position in each image (seeded)"
    elif pos in _CORNERS:
        where = f"in the {pos} corner"
        margin = artifact.get("margin")
        if isinstance(margin, (int, float)) and not isinstance(margin, bool):
            where += f", {100 * margin:g} % of the image side from the edges" if margin else ", at the edges"
    else:
        where = f"at position {pos}" if pos else "at the configured position"
    scale = artifact.get("scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        size = f"scaled to {100 * scale:g} % of the image width"
    else:
        size = "at its native pixel size"
    opacity = artifact.get("opacity")
    if isinstance(opacity, (int, float)) and not isinstance(opacity, bool) and opacity < 1:
        alpha = f"at opacity {opacity:g}"
    else:
        alpha = "fully opaque"
    return f"{where}, {size}, {alpha}"
