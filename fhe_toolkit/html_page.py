"""The self-contained HTML page both reports are (the tournament report, the incentive lab):
plotly.js inlined, no external resource, charts in a two-column grid."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

STYLE = """
 body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
 h1 { font-size: 22px; } .board { border-collapse: collapse; font-size: 13px; }
 .board th, .board td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #ddd; }
 /* Explicit columns: each chart is drawn as the page is read, at its cell's width then. */
 .charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
 @media (max-width: 1100px) { .charts { grid-template-columns: minmax(0, 1fr); } }
"""


def styled(
    figure: go.Figure, title: str, x: str, y: str, *, height: int, legend_y: float
) -> go.Figure:
    """``figure`` with its title, axis titles, and the reports' look: white, ``height`` pixels
    tall, the legend in a row below the plot at ``legend_y``."""
    figure.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, template="plotly_white", height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": legend_y},
    )  # fmt: skip
    return figure


def chart_grid(charts: dict[str, go.Figure]) -> str:
    """The charts, each in its own element (id: its key), in the page's grid."""
    sections = "\n".join(
        '<section class="chart">'
        + pio.to_html(
            figure,
            full_html=False,
            include_plotlyjs=False,
            div_id=name,
            default_width="100%",
            config={"displayModeBar": False, "responsive": True},
        )
        + "</section>"
        for name, figure in charts.items()
    )
    return f'<div class="charts">\n{sections}\n</div>'


def page(title: str, body: str) -> str:
    """A whole page: ``title`` (already escaped), ``body`` HTML, plotly.js inlined."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
</head><body>
{body}
</body></html>
"""
