"""DVC stage ``evaluate``: accuracy matrix, metrics.json and plots (runs/pipeline/eval).

All logic is :func:`sdlora.pipeline.evaluate.evaluate_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("evaluate"))
