"""The deployable model: Keras layers it needs, building and checking it, its card, predicting."""
