"""DVC stage ``evaluate``: accuracy matrix, metrics.json and plots (runs/pipeline/eval).

All logic is :func:`sdlora.pipeline.evaluate.evaluate_stage`, the options (``--help``) are
:func:`sdlora.pipeline.evaluate.main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.pipeline.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
