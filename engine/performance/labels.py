"""Labels sent back for scored rows, as they travel from a worker to the join: a value of
numpy arrays, in a module of its own so that a worker, which only passes labels on, does not
import the join (and with it pyarrow, SciPy and the Numba kernels) to name them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Labels:
    """Labels sent back for one model: per request id, one label per row of that request."""

    model: str
    ids: tuple[str, ...]
    counts: np.ndarray  # labels per id
    values: np.ndarray  # float64: every id's labels, one id after the other

    @property
    def rows(self) -> int:
        return len(self.values)

    def each(self):
        ends = np.cumsum(self.counts)
        return zip(self.ids, np.split(self.values, ends[:-1]))
