"""DVC stage ``validate``: every key and value of params.yaml (runs/pipeline/params_valid.json).

All logic is :func:`sdlora.pipeline.validate.validate_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("validate"))
