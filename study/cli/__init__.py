"""The command lines, one module (or package) per command: `python -m study.X` runs study/X.py, which imports
`build_parser` and `main` from here. A command checks its input (one line, exit code 2) and calls the layers
below."""
