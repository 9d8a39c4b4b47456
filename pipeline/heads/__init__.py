"""Heads trained on cached features: the registry of kinds, the grid, the sweep, out of core, Keras forms."""
