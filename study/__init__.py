"""Hyperparameter studies of transfer learning on Ray Tune. The sub-packages are layers (docs/architecture.md):
cli > tune > watch > ranking | merging > analysis | trial > core, each importing only those below it."""
