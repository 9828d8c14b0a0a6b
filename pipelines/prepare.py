"""DVC stage ``prepare``: the configured benchmark into per-task Parquet splits (data/prepared).

All logic is :func:`sdlora.stages.prepare.prepare_stage`; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("prepare"))
