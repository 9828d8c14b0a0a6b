"""DVC stage ``tune`` (tune/dvc.yaml): a Ray Tune sweep of whole task sequences over tune.space.

All logic is :func:`sdlora.pipeline.tune.tune_stage`, the options (``--help``) are
:func:`sdlora.pipeline.tune.main`'s; see tune/dvc.yaml and docs/tune.md.
"""

import sys

from sdlora.pipeline.tune import main

if __name__ == "__main__":
    sys.exit(main())
