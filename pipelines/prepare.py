"""DVC stage ``prepare``: the configured benchmark into per-task Parquet splits (data/prepared).

All logic is :func:`sdlora.pipeline.prepare.prepare_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("prepare"))
