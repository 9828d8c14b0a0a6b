"""DVC stage ``train@k``: task k on Ray Train, evaluated and tracked (runs/pipeline/task_<k>).

All logic is :func:`sdlora.pipeline.train.train_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("train"))
