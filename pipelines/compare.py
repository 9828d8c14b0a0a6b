"""DVC stage ``compare`` (compare/dvc.yaml): every compare.methods entry over compare.seeds.

All logic is :func:`sdlora.pipeline.compare.compare_stage`, the options (``--help``) are
:func:`sdlora.pipeline.compare.main`'s; see compare/dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.pipeline.compare import main

if __name__ == "__main__":
    sys.exit(main())
