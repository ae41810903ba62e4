"""Rows to replay (`--data`): real rows make honest benchmarks. Random normal rows make a
monitored server raise drift alerts, fill the scoring log with noise and send trees down paths
real traffic never takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_rows(path: str | Path, input_name: str | None = None, outputs: tuple[str, ...] = ()) -> np.ndarray:
    """[rows, columns] from a Parquet file (its numeric columns in order, less a drift
    reference's output columns: NAME:COLUMN ones and those named as one of the model's
    `outputs`, e.g. "label", so a reference works as it is) or an NPZ file (the array named like
    the input, else its only array)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--data {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if input_name in names:
                array = data[input_name]
            elif len(names) == 1:
                array = data[names[0]]
            else:
                raise SystemExit(f"--data {path}: holds {names}; name one array like the model's input ({input_name})")
        return array.reshape(len(array), -1) if array.ndim != 2 else array
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SystemExit(f"--data {path}: not a Parquet or NPZ file ({str(exc).splitlines()[0]})") from None
    # numeric columns, less a drift reference's output columns ("probabilities:1", "label")
    numeric = [f.name for f in table.schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
               and ":" not in f.name and f.name not in outputs]
    if not numeric:
        raise SystemExit(f"--data {path}: no numeric columns")
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric])


def fit(rows: np.ndarray, width: int, dtype, what: str) -> np.ndarray:
    """The rows as the model takes them: `width` values each, in its dtype; a clear stop otherwise."""
    if width > 0 and rows.shape[1] != width:
        raise SystemExit(f"--data has {rows.shape[1]} values per row; {what} takes {width} "
                         "(a drift reference with output columns too? keep only the inputs)")
    return np.ascontiguousarray(rows.astype(dtype, copy=False))
