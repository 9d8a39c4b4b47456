"""Imported first by a subprocess, makes every `import tensorflow` fail (to prove a path never needs it)."""

import importlib.abc
import sys


class _RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/no_tensorflow.py)", name=name)
        return None


sys.meta_path.insert(0, _RefuseTensorFlow())
