"""The dataset as the prepare stage sees it: sources, splits, duplicates, the sanity report, the manifest."""
