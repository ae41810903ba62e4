"""`scorewire reference`: a seeded uniform sample of training rows as a drift reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def make_reference(source: Path, out: Path, sample: int, seed: int = 0) -> int:
    """Write `sample` rows of `source` (all of them if fewer) to `out`; returns the row count."""
    if sample <= 0:
        raise SystemExit("--sample must be positive")
    table = pq.read_table(source)
    if table.num_rows > sample:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=sample, replace=False))
        table = table.take(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return table.num_rows
