"""Backbone ranking before training (`python -m study.rank`, `prescreen:` in a space), plain PyTorch, no Ray.

Modules: scores (the transferability scores: LogME, k-NN, linear probe), candidates (each candidate's features
through the feature cache, the ranked table, scores.csv/json, the pre-screen of a space), compare (a finished
study's backbones scored against the accuracies it reached). The command line is study/cli/rank.py.
"""
