"""The DVC pipeline's stages as library functions, one module each; ``pipelines/*.py`` call them.

``prepare`` -> ``pretrain`` -> ``train@0`` ... ``train@T-1`` -> ``evaluate`` -> ``report``
(paths in :mod:`sdlora.pipeline.layout`). Every stage writes its output folder atomically: a failed
or
killed stage leaves the previous output or none, never half of one.

- ``train@k`` trains task k on Ray Train (:func:`sdlora.ops.ray_train.train_task_distributed`,
  streaming its Parquet split), evaluates every task seen so far on the driver, logs the task to
  the sequence's MLflow run (step = k) and writes ``task_<k>/`` = the adapter after ``end_task``,
  the epoch log and ``record.json`` (every task's record so far, the run key and run id).
- Ray's run folder is named after a hash of everything task k depends on, so a killed stage
  resumes from its last epoch checkpoint when re-run, and a re-run of a finished stage restores
  the finished state instead of training again (the output is then bit-identical).
- The MLflow run is found by the whole sequence's key (:data:`sdlora.ops.tracking.KEY_TAG`): a
  re-run stage continues the same run; a run created after earlier tasks were trained (a changed
  later-task setting, a new tracking store) first gets their metrics from ``record.json``.
"""
