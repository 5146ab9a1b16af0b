"""The bottom layer: the trial config, the metric schema, named options, search spaces, files and the
environment record. Light on purpose (no torch, Ray, Plotly or Optuna): checking a config or a space is cheap."""
