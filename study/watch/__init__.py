"""What a user watches while a study runs: the console, the live report and MLflow, fed finished trials' rows by
the Ray layer's callbacks (never Ray objects)."""
