"""The reproduction kit: published protocols as presets, run through the pipeline (``python -m
sdlora reproduce``), with a reproduced-vs-published table."""
