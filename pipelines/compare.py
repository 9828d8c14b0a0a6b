"""DVC stage ``compare`` (compare/dvc.yaml): every compare.methods entry over compare.seeds.

All logic is :func:`sdlora.pipeline.compare.compare_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see compare/dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("compare"))
