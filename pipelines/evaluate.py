"""DVC stage ``evaluate``: accuracy matrix, metrics.json and plots (runs/pipeline/eval).

All logic is :func:`sdlora.stages.evaluate.evaluate_stage`; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("evaluate"))
