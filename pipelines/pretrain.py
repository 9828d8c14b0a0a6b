"""DVC stage ``pretrain``: the backbone record, and the embedded backbone (artifacts/backbone).

All logic is :func:`sdlora.pipeline.pretrain.pretrain_stage`, the options (``--help``) are
:func:`sdlora.pipeline.pretrain.main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.pipeline.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
