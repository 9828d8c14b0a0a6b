"""DVC stage ``pretrain``: the backbone record, and the embedded backbone (artifacts/backbone).

All logic is :func:`sdlora.pipeline.pretrain.pretrain_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("pretrain"))
