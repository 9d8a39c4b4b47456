"""Looking at the data through the cached features: learning curves, errors as pictures, label issues, maps."""
