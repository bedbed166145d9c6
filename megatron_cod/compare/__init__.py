"""Comparing runs: select training runs (MLflow or run directories), align them at equal tokens,
group seeds, tabulate and plot depth statistics, and judge the paper's claims against the spread."""
