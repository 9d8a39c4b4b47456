"""Choosing heads on validation, scoring them once on test, and what the sweep cost."""
