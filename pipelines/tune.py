"""DVC stage ``tune`` (tune/dvc.yaml): a Ray Tune sweep of whole task sequences over tune.space.

All logic is :func:`sdlora.pipeline.tune.tune_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see tune/dvc.yaml and docs/tune.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("tune"))
