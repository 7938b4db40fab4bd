"""Cost of `mergekit-cabs search`: time per evaluation and peak memory vs one merge (+ load)."""
