"""DVC stage ``report``: final metrics, plots and merged model to MLflow (runs/pipeline/report).

All logic is :func:`sdlora.stages.report.report_stage`; see dvc.yaml and docs/pipeline.md.
"""

import sys

from sdlora.stages.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("report"))
