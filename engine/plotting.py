"""Matplotlib for the HTML reports (`scorewire report`): figures drawn off screen and inlined
as PNG, time axes in UTC. Matplotlib is imported on first use (the `demo` extra)."""

from __future__ import annotations

import base64
import io

import numpy as np


def png(fig) -> str:
    """The figure as an inline <img> (and closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def figure(width: float = 9, height: float = 3.2, rows: int = 1):
    """(figure, axes): one axes, or `rows` of them sharing the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows == 1:
        return plt.subplots(figsize=(width, height))
    return plt.subplots(rows, 1, figsize=(width, height), sharex=True)


def discard(fig) -> None:
    """A figure with nothing drawn on it, closed."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def time_axis(axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def binned(t_us: np.ndarray, edges: np.ndarray, values: np.ndarray, reduce=None) -> tuple[np.ndarray, np.ndarray]:
    """(every bin's start as datetime64[us], `reduce` of the values in it: their mean by
    default), NaN for a bin without rows: matplotlib breaks a line at NaN, so an idle gap
    shows as a gap instead of a line drawn across it as if traffic had gone on."""
    bins = np.clip(np.digitize(t_us, edges) - 1, 0, len(edges) - 2)
    out = np.full(len(edges) - 1, np.nan)
    if reduce is None:
        count = np.bincount(bins, minlength=len(edges) - 1)
        total = np.bincount(bins, weights=values.astype(np.float64), minlength=len(edges) - 1)
        np.divide(total, count, out=out, where=count > 0)
    else:
        order = np.argsort(bins, kind="stable")
        starts = np.searchsorted(bins[order], np.arange(len(edges)))
        for b in np.flatnonzero(np.diff(starts)):
            out[b] = reduce(values[order[starts[b]:starts[b + 1]]])
    return edges[:-1].astype(np.int64).astype("datetime64[us]"), out


__all__ = ["binned", "discard", "figure", "png", "time_axis"]
