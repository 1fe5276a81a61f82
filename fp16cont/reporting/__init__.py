"""Stage 4, reporting: result dataclasses, tables, side-by-side comparison, plots, stagnation audit, memory."""
