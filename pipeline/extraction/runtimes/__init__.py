"""Inference runtimes: how a truncated backbone's compiled step is made (TensorFlow today)."""
