"""DVC stage ``pretrain``: the backbone record, and the embedded backbone (artifacts/backbone).

All logic is :func:`sdlora.stages.pretrain.pretrain_stage`; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("pretrain"))
