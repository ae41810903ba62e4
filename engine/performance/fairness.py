"""Group fairness of a version's predictions (`[models.fairness]`): the protected feature's
privileged group (its value `privileged`) against every other row.

Over the last `window` scored rows, labelled or not:
    spd = P(favourable | unprivileged) - P(favourable | privileged)  (statistical parity difference)
    dir = P(favourable | unprivileged) / P(favourable | privileged)  (disparate impact ratio)
Over the last `window` labelled rows (the label join's), with TPR(g) = P(predicted favourable |
label favourable, group g), the true-positive rate:
    eod = TPR(unprivileged) - TPR(privileged)                        (equal opportunity difference)

The favourable outcome is the predicted class `favorable` (binary: the score above 0.5 is
class 1); a favourable label is that class. A labelled row's group is the one it was scored
with (`groups`, carried through the join's pending rows), not read again when its label comes.
NaN while a group has no row in the window (dir also while the privileged group has no
favourable prediction; eod while a group has no favourable label). An alert is raised while
dir is outside `dir_band` (the four-fifths rule by default), cleared when it is back.

What they mean: spd and dir, how differently the model treats the two groups' rows as they
come; eod, how much more often (positive) or less often (negative) the unprivileged group's
deserving rows (favourable label) are predicted favourable than the privileged group's.
What they do not mean: why; whether the labels themselves are fair (eod takes them as the
truth); anything about the other error (false positives: equalized odds is not here); nor,
on few rows, more than noise (the row counts are exported beside them). fairlearn's
differences are max - min over groups, so they equal |spd| and |eod|.
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
        # the last `window` labelled rows: group, predicted favourable, label favourable (eod)
        self.labelled_privileged = np.zeros(size, bool)
        self.labelled_predicted = np.zeros(size, bool)
        self.labelled_favorable = np.zeros(size, bool)
        self.labelled_n = 0
        self.changed = False
        self.alert = False

    def groups(self, features: np.ndarray) -> np.ndarray:
        """Each row's group (rows x 1, int16: 1 privileged, 0 not), kept with the row until its
        label comes (eod)."""
        return (np.asarray(features)[:, self.column] == self.settings.privileged).astype(np.int16)[:, None]

    def _predicted(self, scores: np.ndarray) -> np.ndarray:
        """Whether each row's predicted class is the favourable one."""
        if self.task == "binary":
            return (np.asarray(scores) > 0.5) == (self.settings.favorable == 1)
        return np.argmax(scores, axis=1) == self.settings.favorable

    def add(self, features: np.ndarray, scores: np.ndarray) -> None:
        """Rows of one batch: the monitored input (rows x features) and the version's scores."""
        s = self.settings
        group = np.asarray(features)[:, self.column] == s.privileged
        favorable = self._predicted(scores)
        size = s.window
        group, favorable = group[-size:], favorable[-size:]
        at = (self.n + np.arange(len(group))) % size
        self.privileged[at] = group
        self.favorable[at] = favorable
        self.n += len(group)
        self.changed = True

    def labelled(self, groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        """Rows that joined their labels: their groups as scored (1 privileged, 0 not, -1
        unknown: left out), their scores and labels."""
        known = np.asarray(groups) >= 0
        if not known.all():
            groups, scores, labels = groups[known], scores[known], labels[known]
        size = self.settings.window
        group = np.asarray(groups)[-size:] == 1
        predicted = self._predicted(scores)[-size:]
        favorable = (np.asarray(labels) == self.settings.favorable)[-size:]
        at = (self.labelled_n + np.arange(len(group))) % size
        self.labelled_privileged[at] = group
        self.labelled_predicted[at] = predicted
        self.labelled_favorable[at] = favorable
        self.labelled_n += len(group)
        self.changed = True

    def figures(self) -> dict[str, float]:
        n = min(self.n, self.settings.window)
        privileged, favorable = self.privileged[:n], self.favorable[:n]
        p_priv = favorable[privileged].mean() if privileged.any() else float("nan")
        p_unpriv = favorable[~privileged].mean() if (~privileged).any() else float("nan")
        spd = float(p_unpriv - p_priv)
        ratio = float(p_unpriv / p_priv) if p_priv == p_priv and p_priv > 0 else float("nan")
        n = min(self.labelled_n, self.settings.window)
        deserving = self.labelled_favorable[:n]  # the rows a true positive is counted among
        group, predicted = self.labelled_privileged[:n][deserving], self.labelled_predicted[:n][deserving]
        tpr_priv = predicted[group].mean() if group.any() else float("nan")
        tpr_unpriv = predicted[~group].mean() if (~group).any() else float("nan")
        return {"spd": spd, "dir": ratio, "eod": float(tpr_unpriv - tpr_priv),
                "privileged_rows": float(privileged.sum()), "unprivileged_rows": float((~privileged).sum()),
                "privileged_favourable_labels": float(group.sum()),
                "unprivileged_favourable_labels": float((~group).sum())}

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
