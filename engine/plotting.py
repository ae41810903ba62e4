"""Matplotlib for the HTML reports (`scorewire report`): figures drawn off screen and inlined
as PNG, time axes in UTC. Matplotlib is imported on first use (the `demo` extra)."""

from __future__ import annotations

import base64
import io


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


__all__ = ["discard", "figure", "png", "time_axis"]
