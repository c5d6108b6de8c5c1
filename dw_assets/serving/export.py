"""``dw export-playlists``: a week's playlists in the exported file contract (docs/contracts.md).

The week is streamed, never held whole: Spark wrote ``ranked_playlists`` sorted by (user_id,
position) into part files whose names follow that order, so reading the parts one record batch
at a time yields the file's order, and the rows are written in Parquet row groups of the size a
one-shot pandas write uses (``ROW_GROUP``), which keeps the file byte-identical to it. Driver
memory: one row group (1 Mi rows, ~40 MB) whatever the week's size (15 G rows at 500 M users).
A partition that is not in that order (written by another tool, or by hand) is sorted in memory
instead, only up to ``ExportConfig.max_unsorted_rows`` (10 M rows: ~1 GB while pandas sorts) and
``DW_DRIVER_ROW_LIMIT``: a larger one (a whole week at the target is 15 G rows) is refused before any row
is read, with the fix: rebuild the week's ``ranked_playlists``, which Spark writes sorted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dw_assets.calendar import week_start
from dw_assets.lake.driver_guard import check_driver_rows
from dw_assets.lake.storage import Lake, LakeError

# The contract other tools read: names and types fixed.
EXPORT_COLUMNS = {"user_id": np.int64, "position": np.int64, "track_id": np.int64, "score": np.float64,
                  "source": str, "is_exploration": bool}
ROW_GROUP = 1024 * 1024  # pyarrow's default row group: what ``DataFrame.to_parquet`` writes in one go
BATCH = 64 * 1024


@dataclass(frozen=True)
class ExportConfig:
    """max_unsorted_rows: the largest partition not stored in (user_id, position) order that the export
    sorts in memory (about 100 B a row while pandas sorts: 10 M rows ~ 1 GB)."""

    max_unsorted_rows: int = 10_000_000


def playlists_for_export(playlists: pd.DataFrame) -> pd.DataFrame:
    """ranked_playlists rows -> the export columns, sorted by (user_id, position)."""
    frame = playlists[list(EXPORT_COLUMNS)].astype(EXPORT_COLUMNS)
    return frame.sort_values(["user_id", "position"], kind="stable").reset_index(drop=True)


class _Unsorted(Exception):
    """The stored rows are not in (user_id, position) order."""


def _batches(lake: Lake, uri: str) -> Iterator[pd.DataFrame]:
    """The partition's rows as pandas chunks of at most ``BATCH`` rows, part file by part file in name order."""
    columns = list(EXPORT_COLUMNS)
    if lake.is_s3:
        bucket, key, names = lake._s3_names(uri)
        parts = lake._complete_parts(names)
        if not parts:
            raise LakeError(f"no lake data at {uri} (was the upstream partition materialized?)")
        for name in sorted(parts):  # one part file at a time
            body = lake.s3_client.get_object(Bucket=bucket, Key=f"{key}/{name}")["Body"].read()
            for batch in pq.ParquetFile(io.BytesIO(body)).iter_batches(batch_size=BATCH, columns=columns):
                yield batch.to_pandas()
        return
    for path in sorted(ds.dataset(uri, format="parquet").files):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=columns):
            yield batch.to_pandas()


def _export_frame(chunk: pd.DataFrame) -> pd.DataFrame:
    return chunk[list(EXPORT_COLUMNS)].astype(EXPORT_COLUMNS).reset_index(drop=True)


def _stream(lake: Lake, uri: str, tmp: Path) -> int:
    """Write the partition to ``tmp`` in stored order; raises ``_Unsorted`` at the first row out of order."""
    writer, pending, pending_rows, rows, last = None, [], 0, 0, (-np.inf, -np.inf)

    def flush(tables: list[pa.Table]) -> None:
        writer.write_table(pa.concat_tables(tables), row_group_size=ROW_GROUP)

    try:
        for chunk in _batches(lake, uri):
            if chunk.empty:
                continue
            frame = _export_frame(chunk)
            users, positions = frame["user_id"].to_numpy(), frame["position"].to_numpy()
            ordered = (users[1:] > users[:-1]) | ((users[1:] == users[:-1]) & (positions[1:] >= positions[:-1]))
            if not ordered.all() or (int(users[0]), int(positions[0])) < last:
                raise _Unsorted
            last = (int(users[-1]), int(positions[-1]))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            pending.append(table)
            pending_rows += len(frame)
            rows += len(frame)
            while pending_rows >= ROW_GROUP:  # full row groups only: the same groups as a one-shot write
                merged = pa.concat_tables(pending)
                flush([merged.slice(0, ROW_GROUP)])
                rest = merged.slice(ROW_GROUP)
                pending, pending_rows = ([rest] if len(rest) else []), len(rest)
        if writer is None:  # no rows: the one-shot write of an empty export
            playlists_for_export(pd.DataFrame({c: pd.Series(dtype=t) for c, t in EXPORT_COLUMNS.items()})) \
                .to_parquet(tmp, index=False)
            return 0
        if pending:
            flush(pending)
        return rows
    finally:
        if writer is not None:
            writer.close()


def export_playlists(lake: Lake, week: str, out: Path, config: ExportConfig = ExportConfig()) -> int:
    """Write ``week``'s ranked playlists to ``out`` (Parquet, written to a temp file then renamed); returns rows."""
    week_start(week)
    uri = lake.uri("gold", "ranked_playlists", week)
    if not lake.exists(uri):
        raise LakeError(f"no playlists for week {week} at {uri}: run `dw run --lake ... --week {week}` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        rows = _stream(lake, uri, tmp)
    except _Unsorted:
        from dw_assets.lake.resources import parquet_rows

        tmp.unlink(missing_ok=True)
        stored_rows = parquet_rows(lake, uri)  # from the footers: nothing is read yet
        if stored_rows > config.max_unsorted_rows:
            raise LakeError(f"{uri} holds {stored_rows} rows not stored in (user_id, position) order, above the "
                            f"{config.max_unsorted_rows} the export sorts in memory: rebuild week {week}'s "
                            "ranked_playlists (`dw run`), which Spark writes sorted") from None
        check_driver_rows("ranked_playlists", stored_rows, "export of a partition not stored in (user_id, position) order")
        frame = playlists_for_export(lake.read_frame(uri))
        frame.to_parquet(tmp, index=False)
        rows = len(frame)
    tmp.replace(out)
    return rows
