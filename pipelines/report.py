"""DVC stage ``report``: final metrics, plots and merged model to MLflow (runs/pipeline/report).

All logic is :func:`sdlora.pipeline.report.report_stage`; the options (``--help``) are
:func:`sdlora.cli.stage_main`'s; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("report"))
