"""Figure set-up shared by the plotting functions (matplotlib, the `plot` extra)."""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["PLOT_INSTALL", "agg_figure"]

#: How to install what the plots need.
PLOT_INSTALL = 'pip install "hf-decoding[plot]"'


def agg_figure(path: pathlib.Path, figsize: tuple[float, float]) -> Any:
    """A matplotlib `Figure` on the Agg canvas (no global backend change, no display); creates `path`'s folder.

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"Plotting needs matplotlib. Install it with: {PLOT_INSTALL}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure
