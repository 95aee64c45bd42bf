"""One parquet file per era: the files a fund opens its rounds with, one era a round.

A file is named after its era, ``era_<label>.parquet``; labels made of digits are zero-padded
to a common width, so listing the folder gives the eras (the rounds) in their order. The
synthetic generator names its per-era live files the same way (:func:`era_file_name`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fhe_toolkit.data.schema import ERA
from fhe_toolkit.errors import DataValidationError
from fhe_toolkit.protocol.files import open_regular, write_atomic

ERA_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Era labels that can name a file as they are (Numerai's: ``"0001"``, ``"1150"``)."""


def era_file_name(label: str, width: int = 0) -> str:
    """``era_<label>.parquet``; a label of digits is zero-padded to ``width``."""
    return f"era_{label.zfill(width) if label.isdigit() else label}.parquet"


@dataclass(frozen=True)
class EraFile:
    era: str
    rows: int
    path: Path


def split_eras(
    path: str | Path, out_dir: str | Path, *, eras: Iterable[str] | None = None
) -> list[EraFile]:
    """Write each era of the parquet file ``path`` (all columns, index kept) to
    ``out_dir/era_<label>.parquet``, in era order; ``eras`` picks some by label.

    Refused before anything is written: ``path`` not a regular file or not parquet, no ``era``
    column, no rows, rows without an era, a label that cannot name a file, an era asked for
    that the file lacks, a file of that name in ``out_dir`` already. Each era is read on its own
    (parquet's row-group statistics skip the rest), so a large file is never held whole.
    """
    path, out = Path(path), Path(out_dir)
    what = "a tournament file (Numerai-format parquet)"
    with open_regular(path, what, DataValidationError) as (handle, size):
        if size == 0:
            raise DataValidationError(f"{path} is empty (0 bytes); give {what}.")
        parquet = _parquet(handle, path)
        counts = _era_counts(parquet, path)
        chosen = _choose(counts, eras, path)
        width = max(len(label) for label in counts) if all(map(str.isdigit, counts)) else 0
        targets = [out / era_file_name(label, width) for label in chosen]
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise DataValidationError(
                f"{existing[0]}"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                + " exists already; nothing was written. Split into another --out folder, or "
                "remove those files first."
            )
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for label, target in zip(chosen, targets, strict=True):
            handle.seek(0)
            table = pq.read_table(handle, filters=[(ERA, "=", _typed(label, parquet))])
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            write_atomic(target, buffer.getvalue())
            written.append(EraFile(label, table.num_rows, target))
    return written


def _parquet(handle: BinaryIO, path: Path) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(handle)
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(
            f"{path} is not a readable parquet file ({exc}); Numerai data comes as parquet."
        ) from None
    names = parquet.schema_arrow.names
    if ERA not in names:
        raise DataValidationError(
            f"{path} has no {ERA!r} column, so it cannot be split by era; it has "
            f"{names[:6]}{' …' if len(names) > 6 else ''}."
        )
    if parquet.metadata.num_rows == 0:
        raise DataValidationError(f"{path} has no rows: there is no era to split.")
    return parquet


def _era_counts(parquet: pq.ParquetFile, path: Path) -> dict[str, int]:
    """Rows per era label, in era order (by number when every label is digits)."""
    column = parquet.read(columns=[ERA]).column(ERA)
    if column.null_count:
        raise DataValidationError(
            f"{path} has {column.null_count} row(s) with no era; every row needs one."
        )
    counts = {
        str(item["values"]): int(item["counts"]) for item in pc.value_counts(column).to_pylist()
    }
    bad = [label for label in counts if not ERA_LABEL.fullmatch(label)]
    if bad:
        raise DataValidationError(
            f"{path} has era label(s) {bad[:3]} that cannot name a file: labels are letters, "
            "digits, '.', '_' or '-' (up to 64), as Numerai's ('0001')."
        )
    numeric = all(label.isdigit() for label in counts)
    return dict(sorted(counts.items(), key=lambda kv: (int(kv[0]), kv[0]) if numeric else kv))


def _choose(counts: dict[str, int], eras: Iterable[str] | None, path: Path) -> list[str]:
    if eras is None:
        return list(counts)
    wanted = set(eras)
    if not wanted:
        raise DataValidationError("no era was asked for; leave --eras out to split every era.")
    unknown = sorted(wanted - set(counts))
    if unknown:
        labels = list(counts)
        shown = ", ".join(labels) if len(labels) <= 6 else f"{labels[0]} … {labels[-1]}"
        raise DataValidationError(
            f"{path} has no era {unknown}; its {len(labels)} era(s): {shown} "
            "(give labels as in its era column)."
        )
    return [label for label in counts if label in wanted]


def _typed(label: str, parquet: pq.ParquetFile) -> object:
    """The label as the era column stores it (Numerai's are strings; some files use numbers)."""
    kind = parquet.schema_arrow.field(ERA).type
    return int(label) if pa.types.is_integer(kind) else label
