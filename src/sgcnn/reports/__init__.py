"""Reports people read: paper-style tables, accuracy-vs-FLOPs plots, group-structure pictures."""

from sgcnn.reports.render import (
    format_table,
    plot_accuracy_vs_flops,
    plot_group_structure,
    write_report,
)

__all__ = ["format_table", "plot_accuracy_vs_flops", "plot_group_structure", "write_report"]
