"""Example scripts (run from the repository root, e.g. ``python -m examples.paper.all``)."""
