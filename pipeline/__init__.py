"""shoulders: transfer learning on small image datasets under DVC."""
