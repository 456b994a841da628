"""Probe-set concept labels: a CSV with the image path, then one 0/1 column per concept.

    image,watermark,striped,...
    0000.png,0,1,...

Image paths are relative to the CSV's folder (absolute paths are kept). Every problem is reported with its place
in the file: ``row`` is the spreadsheet row number (the header is row 1, the first image row 2, blank lines
counted), ``column`` the header name. `read_labels` collects every problem; `load_labels` raises the first ones
as a UserError.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditor.errors import UserError

# Above this many problems a report lists the first ones and counts the rest: a CSV that is wrong everywhere
# should not bury the terminal.
MAX_PROBLEMS = 20
_TRUE, _FALSE = "1", "0"


@dataclass(frozen=True)
class ProbeLabels:
    """The labels of a probe set, in file order.

    images : (n,) resolved image paths; concepts : (k,) column names; matrix : (n, k) bool.
    """

    source: Path
    images: tuple[Path, ...]
    concepts: tuple[str, ...]
    matrix: np.ndarray
    rows: tuple[int, ...]  # the spreadsheet row of each image (for messages about it)

    def __len__(self) -> int:
        return len(self.images)

    def column(self, concept: str) -> np.ndarray:
        return self.matrix[:, self.concepts.index(concept)]


def _binary(text: str) -> bool | None:
    """'0'/'1' (also written 0.0/1.0 by spreadsheet exports) -> bool; anything else None."""
    t = text.strip()
    if t in (_TRUE, _FALSE):
        return t == _TRUE
    try:
        v = float(t)
    except ValueError:
        return None
    return bool(v) if v in (0.0, 1.0) else None


def read_labels(path: Path, check_files: bool = True) -> tuple[ProbeLabels | None, list[str]]:
    """Parse and validate a labels CSV.

    Returns (labels, problems): labels is None when the file cannot be used at all; otherwise the rows that
    parsed, and `problems` lists every problem as one line (file, row, column, what is wrong). With
    `check_files`, every image must exist on disk (readability is the caller's business).
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        return None, [f"{name}: labels file not found"]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None, [f"{name}: not a UTF-8 text file"]
    rows = list(csv.reader(text.splitlines()))
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]
    if not numbered:
        return None, [f"{name}: the file is empty (expected a header: image, then one column per concept)"]
    header_row, header = numbered[0]
    header = [h.strip() for h in header]
    problems: list[str] = []
    if len(header) < 2:
        return None, [f"{name}: row {header_row}: the header needs the image column and at least one concept column"]
    for j, h in enumerate(header):
        if not h:
            problems.append(f"{name}: row {header_row}, column {j + 1}: empty column name")
        elif header.index(h) != j:
            problems.append(f"{name}: row {header_row}, column {j + 1}: column {h!r} appears twice")
    if all(_binary(h) is not None for h in header[1:]):
        return None, [f"{name}: row {header_row}: the first row must be a header (image, then concept names), "
                      f"not data ({', '.join(header[:4])}...)"]
    if problems:
        return None, problems
    concepts = tuple(header[1:])
    image_col = header[0]
    root = path.parent
    images: list[Path] = []
    values: list[list[bool]] = []
    kept_rows: list[int] = []
    seen: dict[str, int] = {}
    for row_no, row in numbered[1:]:
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            problems.append(f"{name}: row {row_no}: {len(cells)} values, the header has {len(header)} columns")
            continue
        row_ok = True
        rel = cells[0]
        if not rel:
            problems.append(f"{name}: row {row_no}, column {image_col!r}: empty image path")
            row_ok = False
        elif rel in seen:
            problems.append(f"{name}: row {row_no}, column {image_col!r}: {rel} is listed twice (also row {seen[rel]})")
            row_ok = False
        else:
            seen[rel] = row_no
        image = Path(rel).expanduser()
        image = image if image.is_absolute() else root / image
        if row_ok and check_files and not image.is_file():
            problems.append(f"{name}: row {row_no}, column {image_col!r}: image not found: {image}")
            row_ok = False
        flags: list[bool] = []
        for col, cell in zip(concepts, cells[1:]):
            b = _binary(cell)
            if b is None:
                problems.append(f"{name}: row {row_no}, column {col!r}: {cell!r} is not 0 or 1")
                row_ok = False
            flags.append(bool(b))
        if row_ok:
            images.append(image)
            values.append(flags)
            kept_rows.append(row_no)
    if not images and not problems:
        problems.append(f"{name}: no image rows after the header")
    matrix = np.array(values, dtype=bool).reshape(len(values), len(concepts))
    labels = ProbeLabels(source=path, images=tuple(images), concepts=concepts, matrix=matrix, rows=tuple(kept_rows))
    return labels, problems


def summarise(problems: list[str], limit: int = MAX_PROBLEMS) -> list[str]:
    """The first `limit` problems, and one line counting the rest."""
    if len(problems) <= limit:
        return list(problems)
    return problems[:limit] + [f"... and {len(problems) - limit} more problems of the same file"]


def validate_labels(path: Path, key: str, problems: list[str]) -> tuple[ProbeLabels | None, list[str]]:
    """Read a check's labels CSV in its `validate`: its problems appended to `problems` as `<key>: ...` lines
    (summarised); returns what read_labels returns."""
    labels, found = read_labels(path)
    problems.extend(f"{key}: {p}" for p in summarise(found))
    return labels, found


def missing_columns(labels: ProbeLabels, names: Sequence[str], key: str, path: Path) -> list[str]:
    """One `<key>[j]: ...` line per name of `names` that is not a column of the labels CSV at `path`."""
    return [f"{key}[{j}]: {name!r} is not a column of {path} (columns: {', '.join(labels.concepts)})"
            for j, name in enumerate(names) if name not in labels.concepts]


def load_labels(path: Path) -> ProbeLabels:
    """A valid labels CSV, or UserError naming the first problem (file, row, column)."""
    labels, problems = read_labels(path)
    if problems or labels is None:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return labels
