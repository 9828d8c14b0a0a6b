"""One module per outside system: Ray Train, Ray sessions, Ray Tune, MLflow, DVC, the console,
atomic files."""
