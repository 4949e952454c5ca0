"""Row-level reject book-keeping shared by loaders (the error classes are intentrec.errors).

Every user-facing message names the input (file and line, config key), shows the value received,
states what was expected and says how to fix it. Nothing is dropped silently: with `strict=true`
(the default) the first bad row raises; with `strict=false` every bad row goes to `rejects.csv`
with its reason and the counts land in `stats.json`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from intentrec.errors import DataError

log = logging.getLogger(__name__)

# Columns every raw frame carries so a bad value can be traced to its source line.
FILE_COLUMN = "_source_file"
LINE_COLUMN = "_source_line"


def _short(value: object, limit: int = 60) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return "an empty value"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RejectBook:
    """Collects bad rows found by vectorised checks on a raw frame.

    A frame handed to `check` must carry `FILE_COLUMN` and `LINE_COLUMN`. `check` marks the rows
    whose mask is true; `apply` drops them all at once at the end, so one row with two problems is
    reported twice but removed once.
    """

    strict: bool
    records: list[pd.DataFrame] = field(default_factory=list)
    # canonical column -> the source file's own column name, so messages name the column the user has
    source_names: dict[str, str] = field(default_factory=dict)
    row_label: str = "line"  # "row" for tables without lines (Parquet); numbers are 1-based either way
    # What the load noticed but kept (columns nothing maps, times that look like a unit mistake): logged,
    # printed in the prepare summary and stored in stats.json.
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def column_text(self, column: str) -> str:
        source = self.source_names.get(column)
        return f"'{source}' ({column})" if source and source != column else f"'{column}'"

    def check(
        self,
        frame: pd.DataFrame,
        bad: np.ndarray | pd.Series,
        column: str,
        expected: str,
        fix: str,
        values: pd.Series | None = None,
    ) -> None:
        bad = np.asarray(bad, dtype=bool)
        if not bad.any():
            return
        shown = (values if values is not None else frame[column]) if column in frame or values is not None else None
        bad_index = np.flatnonzero(bad)
        if self.strict:
            first = bad_index[0]
            value = None if shown is None else shown.iloc[first]
            raise DataError(
                f"{frame[FILE_COLUMN].iloc[first]}, {self.row_label} {frame[LINE_COLUMN].iloc[first]}, column "
                f"{self.column_text(column)}: got {_short(value)}; expected {expected}. {fix} "
                f"({len(bad_index)} row(s) in this load have this problem; set data.strict=false to "
                f"write them to rejects.csv and go on without them.)"
            )
        rows = frame.iloc[bad_index]
        self.records.append(
            pd.DataFrame(
                {
                    "file": rows[FILE_COLUMN].astype(str).to_numpy(),
                    "line": rows[LINE_COLUMN].to_numpy(),
                    "column": column,
                    "source_column": self.source_names.get(column, column),
                    "value": (shown.iloc[bad_index].astype(str).to_numpy() if shown is not None else ""),
                    "reason": f"expected {expected}",
                }
            )
        )
        if "_rejected" not in frame:
            frame["_rejected"] = False
        frame.loc[frame.index[bad_index], "_rejected"] = True

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the frame without rejected rows (and without the marker column)."""
        if "_rejected" not in frame:
            return frame
        rejected = frame["_rejected"].fillna(False).to_numpy(dtype=bool)
        kept = frame.loc[~rejected]
        return kept.drop(columns="_rejected")

    @property
    def count(self) -> int:
        return int(sum(len(r) for r in self.records))

    def table(self) -> pd.DataFrame:
        if not self.records:
            return pd.DataFrame(columns=["file", "line", "column", "source_column", "value", "reason"])
        return pd.concat(self.records, ignore_index=True)

    def summary(self) -> dict:
        table = self.table()
        by_reason = (
            table.groupby(["column", "reason"]).size().reset_index(name="rows")
            if len(table)
            else pd.DataFrame(columns=["column", "reason", "rows"])
        )
        return {
            "problems": int(len(table)),
            "rows": int(table[["file", "line"]].drop_duplicates().shape[0]) if len(table) else 0,
            "by_reason": [
                {"column": r.column, "reason": r.reason, "rows": int(r.rows)} for r in by_reason.itertuples()
            ],
        }

    def write(self, path: Path) -> None:
        self.table().to_csv(path, index=False)
