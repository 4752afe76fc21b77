"""A resumable results table: one CSV row per finished run, printed as Markdown.

Studies (``tools/ssl_transfer.py``, ``tools/suprem_transfer.py``) append a row as each run finishes and
skip runs whose row is already there, so a stopped study resumes where it stopped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path


class ResultsTable:
    """Rows keyed by their first field, stored in ``path`` (CSV with header ``fields``)."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str]):
        self.path, self.fields = Path(path), tuple(fields)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != self.fields:
                    raise ValueError(
                        f"{self.path}: header {reader.fieldnames} differs from {list(self.fields)}"
                    )
                self.rows = {row[self.fields[0]]: row for row in reader}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, row: dict) -> None:
        """Write ``row`` (every field, nothing else) at the end of the CSV and keep it in memory."""
        if set(row) != set(self.fields):
            raise KeyError(f"{self.path}: row fields {sorted(row)} differ from {sorted(self.fields)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.rows[str(row[self.fields[0]])] = row

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.fields) + " |", "|" + "---|" * len(self.fields)]
        lines += ["| " + " | ".join(str(row[k]) for k in self.fields) + " |" for row in self.rows.values()]
        return "\n".join(lines)
