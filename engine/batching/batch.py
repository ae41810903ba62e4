"""An immutable batch: the concatenated inputs of several requests and their row ranges."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    inputs: dict[str, np.ndarray]
    bounds: tuple[int, ...]  # row offsets: member i owns rows bounds[i]:bounds[i+1]

    @classmethod
    def concat(cls, members: list[dict[str, np.ndarray]]) -> "Batch":
        """Concatenate the members' inputs along the row axis (no copy for one member)."""
        bounds = [0]
        for inputs in members:
            first = next(iter(inputs.values()))
            bounds.append(bounds[-1] + first.shape[0])
        if len(members) == 1:
            return cls(dict(members[0]), tuple(bounds))
        names = members[0].keys()
        joined = {name: np.concatenate([m[name] for m in members]) for name in names}
        return cls(joined, tuple(bounds))

    @property
    def rows(self) -> int:
        return self.bounds[-1]

    @property
    def members(self) -> int:
        return len(self.bounds) - 1

    def split(self, outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Slice batch outputs back to each member (views, row axis first)."""
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != self.rows:
                raise ValueError(
                    f"output '{name}' has shape {list(array.shape)}; expected {self.rows} rows first"
                )
        b = self.bounds
        return [{name: array[b[i] : b[i + 1]] for name, array in outputs.items()} for i in range(self.members)]
