"""DVC stage ``train@k``: task k on Ray Train, evaluated and tracked (runs/pipeline/task_XX).

All logic is :func:`sdlora.stages.train.train_stage`; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("train"))
