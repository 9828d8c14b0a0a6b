"""DVC stage ``prepare``: the configured benchmark into per-task Parquet splits (data/prepared).

All logic is :func:`sdlora.stages.prepare.prepare_stage`, the options (``--help``) are
:func:`sdlora.stages.prepare.main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.prepare import main

if __name__ == "__main__":
    sys.exit(main())
