"""Group fairness of a version's predictions, over its last `window` scored rows, labelled or
not (`[models.fairness]`): the protected feature's privileged group (its value `privileged`)
against every other row.

    spd = P(favourable | unprivileged) - P(favourable | privileged)  (statistical parity difference)
    dir = P(favourable | unprivileged) / P(favourable | privileged)  (disparate impact ratio)

The favourable outcome is the predicted class `favorable` (binary: the score above 0.5 is
class 1). NaN while a group has no row in the window (dir also while the privileged group has
no favourable prediction). An alert is raised while dir is outside `dir_band` (the four-fifths
rule by default), cleared when it is back. What they mean: how differently the model treats
the two groups' rows as they come, nothing about why, or whether the groups' labels differ;
what they do not: equal error rates (that needs labels: equal opportunity, not yet here).
"""

from __future__ import annotations

import numpy as np

from engine.settings import FairnessSettings


class Fairness:
    def __init__(self, settings: FairnessSettings, task: str, column: int):
        self.settings, self.task, self.column = settings, task, column
        size = settings.window
        self.privileged = np.zeros(size, bool)
        self.favorable = np.zeros(size, bool)
        self.n = 0
        self.changed = False
        self.alert = False

    def add(self, features: np.ndarray, scores: np.ndarray) -> None:
        """Rows of one batch: the monitored input (rows x features) and the version's scores."""
        s = self.settings
        group = np.asarray(features)[:, self.column] == s.privileged
        if self.task == "binary":
            favorable = (np.asarray(scores) > 0.5) == (s.favorable == 1)
        else:
            favorable = np.argmax(scores, axis=1) == s.favorable
        size = s.window
        group, favorable = group[-size:], favorable[-size:]
        at = (self.n + np.arange(len(group))) % size
        self.privileged[at] = group
        self.favorable[at] = favorable
        self.n += len(group)
        self.changed = True

    def figures(self) -> dict[str, float]:
        n = min(self.n, self.settings.window)
        privileged, favorable = self.privileged[:n], self.favorable[:n]
        p_priv = favorable[privileged].mean() if privileged.any() else float("nan")
        p_unpriv = favorable[~privileged].mean() if (~privileged).any() else float("nan")
        spd = float(p_unpriv - p_priv)
        ratio = float(p_unpriv / p_priv) if p_priv == p_priv and p_priv > 0 else float("nan")
        return {"spd": spd, "dir": ratio, "privileged_rows": float(privileged.sum()),
                "unprivileged_rows": float((~privileged).sum())}

    def check(self) -> str | None:
        """'raise' or 'clear' when dir left or came back into its band, else None."""
        ratio = self.figures()["dir"]
        low, high = self.settings.dir_band
        outside = ratio == ratio and not low <= ratio <= high
        if outside != self.alert:
            self.alert = outside
            return "raise" if outside else "clear"
        return None


__all__ = ["Fairness"]
