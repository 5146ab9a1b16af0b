"""Merging two trials' weights and comparing their filters (`python -m study.merge`, document 002), no Ray.

Modules: checkpoints (reading and checking model.pt), interpolation (the alpha sweep, BatchNorm recomputation,
weight matching B to A), evaluation (heads and scores on the target data), align (Git Re-Basin permutation
spec and weight matching), similarity (conv filter similarity), outputs (files and summary). The command line is
study/cli/merge.py.
"""
