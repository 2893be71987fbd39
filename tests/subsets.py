"""Small real-data roots for end-to-end tests: a few rows of a dataset's CSV, their files symlinked."""

import csv
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of a CSV file as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def first_rows(rows: Iterable[Dict[str, str]], n: int, sort_by: Optional[str] = None, **match: str) -> List[Dict]:
    """The first ``n`` rows whose columns equal ``match`` (e.g. ``split="train", label="NORMAL"``), in file order
    or sorted by the column ``sort_by``."""
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return (sorted(hits, key=lambda r: r[sort_by]) if sort_by else hits)[:n]


def link_subset(src: Path, rows: List[Dict[str, str]], path_column: Union[str, Sequence[str]], root: Path,
                csv_name: str, extra: Iterable[Dict[str, str]] = ()) -> Path:
    """A data root ``root`` holding symlinks to the files of ``rows`` (column ``path_column``, or each of several
    columns, e.g. image and mask; relative to ``src``) and ``csv_name`` listing ``rows`` and then ``extra`` (rows
    whose files the caller writes itself)."""
    for r in rows:
        for col in [path_column] if isinstance(path_column, str) else path_column:
            (root / r[col]).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src / r[col], root / r[col])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / csv_name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, *extra])
    return root
