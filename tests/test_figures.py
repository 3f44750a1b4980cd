"""ui.figures: what the figures draw."""

import pandas as pd

from ui import figures


def test_qc_violins_end_at_the_data():
    """Counts per cell are never below 0: the violins' density stops at the smallest value (a
    browser pass saw them reach below 0)."""
    qc = pd.DataFrame({"n_genes_by_counts": [5, 50, 500, 5000], "total_counts": [9, 90, 900, 9e3]})
    for fig in figures.qc_violins(qc, None):
        assert all(t.spanmode == "hard" for t in fig.data)
