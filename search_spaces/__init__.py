"""The named search spaces (`--space NAME` reads NAME.yaml here): shipped as package data with `study`.

A package rather than a folder beside the code, so that a wheel or a non-editable `pip install .` carries them:
study/space.py finds them with importlib.resources, wherever the package is installed.
"""
