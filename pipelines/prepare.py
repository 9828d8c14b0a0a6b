"""DVC stage ``prepare``: the configured benchmark into per-task Parquet splits (data/prepared).

All logic is :func:`sdlora.pipeline.prepare.prepare_stage`, the options (``--help``) are
:func:`sdlora.pipeline.prepare.main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.pipeline.prepare import main

if __name__ == "__main__":
    sys.exit(main())
