"""The science: adapters, the model, methods, the task loop, evaluation and metrics maths (torch,
timm, numpy; nothing of Ray, MLflow, DVC or argv)."""
