"""MLflow tracking, the one module that talks to MLflow: one run per sequence (and per sweep),
metrics at ``step=task``, through MLflow's fluent API.

The tracking URI is, in order: the explicit argument (from params), ``MLFLOW_TRACKING_URI``, or
``sqlite:///<abs root>/mlflow.db``; :meth:`SequenceTracker.open` sets it process-wide
(``mlflow.set_tracking_uri``), as MLflow documents. Experiments on a SQLite store are created
with an explicit ``artifact_location`` (``mlartifacts/<name>`` beside the database), so nothing
lands in ``./mlruns``. A run is opened with ``mlflow.start_run`` (which records the source, user
and git commit tags) and stays MLflow's active run until :meth:`SequenceTracker.close`:
``mlflow.pytorch.log_model`` logs to the active run. A run is found again by its key (tag
:data:`KEY_TAG`), so a re-run stage reopens its run instead of creating another.

What the MLflow UI shows is settled here too: experiments are created (or tagged) as model
training (:data:`EXPERIMENT_KIND`), a task's metrics are logged once per step
(:meth:`SequenceTracker.log_task`), and a logged model carries the metrics of the step it is
logged at (:meth:`SequenceTracker.log_model`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from sdlora.core.metrics import tidy
from sdlora.errors import BadInput

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TRUNCATED = "...[truncated]"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag name, shown in the UI
DESCRIPTION_TAG = "mlflow.note.content"  # MLflow's tag for a run's description (Markdown)
KEY_TAG = "sdlora_key"  # identifies a sequence's run: open(key=...) reopens it, never duplicates
# MLflow's experiment tag for what an experiment holds; "custom_model_development" is what the
# MLflow 3 UI calls "Machine learning" (training runs), as opposed to "genai_development".
KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The MLflow 3.17 UI picks its view from a browser-wide switch (GenAI by default), which this
# query parameter on an experiment or run address sets to training runs.
UI_VIEW_QUERY = "workflowType=machine_learning"


class TrackingError(BadInput, RuntimeError):
    """A tracking call that cannot do what was asked (unknown run id, run not open, ...)."""


# ---- helpers -------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None, root: str | Path = ".") -> str:
    """Explicit ``uri`` > env ``MLFLOW_TRACKING_URI`` > ``sqlite:///<abs root>/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(root).resolve() / DB_NAME}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel -> "/rel" (relative to cwd)
    path = unquote(parsed.path)
    path = path[1:] if path.startswith("/") else path
    return Path(path).resolve()


def portable_uri(uri: str, root: str | Path = ".") -> str:
    """``uri`` as a user would type it in ``root``: a SQLite file under ``root`` relative to it
    (``sqlite:///mlflow.db``), so records stay true when the project moves; others unchanged."""
    db = sqlite_path(uri)
    if db is None or not db.is_relative_to(Path(root).resolve()):
        return uri
    return f"sqlite:///{db.relative_to(Path(root).resolve())}"


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """``<db folder>/mlartifacts/<experiment>`` as a file URI for SQLite; None (store's default)
    for a tracking server, which places artifacts where it was told to."""
    db = sqlite_path(uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "default"
    return (db.parent / ARTIFACTS_DIR / safe).as_uri()


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = str(value)
    elif isinstance(value, tuple | list | set | frozenset):
        text = json.dumps(list(value), default=str)
    else:
        text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
    return text


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.01", ...}``: dotted keys, string values.

    Dicts nest with dots; lists and tuples become JSON; values longer than MLflow's limit
    (``MAX_PARAM_VAL_LENGTH``, 6000 characters in MLflow 3.17) are cut and end in
    ``...[truncated]``. A key longer than MLflow's key limit is an error, not silently changed.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if len(name) > MAX_ENTITY_KEY_LENGTH:
            raise ValueError(f"param key {name!r} is longer than {MAX_ENTITY_KEY_LENGTH} chars")
        out[name] = "{}" if isinstance(value, Mapping) else _param_value(value)
    return out


def git_commit(path: str | Path = ".") -> str | None:
    """The HEAD commit of the git checkout holding ``path``; None outside one (or without git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(path),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's address of an experiment (or one of its runs), in the training-runs view.

    Append it to the UI's base address (``http://127.0.0.1:5000/``).
    """
    page = f"#/experiments/{experiment_id}"
    page += f"/runs/{run_id}" if run_id is not None else "/runs"
    return f"{page}?{UI_VIEW_QUERY}"


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The full UI address for an ``http(s)`` tracking server, else None (no server known)."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return None
    return f"{tracking_uri.rstrip('/')}/{ui_path(experiment_id, run_id)}"


def model_pip_requirements() -> list[str]:
    """What loading a logged merged timm ViT needs, pinned to what is installed here.

    Given explicitly so ``mlflow.pytorch.log_model`` skips inferring requirements, which starts
    a subprocess that imports the model (seconds).
    """
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "torchvision", "timm", "numpy", "pillow", "pandas", "mlflow"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """No "Downloading artifacts" bars or INFO lines on the console while a model is logged
    (MLflow copies the artifacts and checks the input example as it logs)."""
    bars, os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = (
        os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"), "false")  # fmt: skip
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars is None:
            del os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"]
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bars


# ---- the tracker ---------------------------------------------------------------------------
class SequenceTracker:
    """One MLflow run per class-incremental sequence (or sweep), MLflow's active run while open.

    >>> tracker = SequenceTracker()
    >>> run_id = tracker.open(None, "sdlora", "digits-5", params=flatten_params(cfg), key=key)
    >>> tracker.log_task(0, {"accuracy": 97.5, "forgetting": 0.0})
    >>> tracker.close()                       # or: with tracker: ...

    ``open(..., run_id=run_id)`` or the same ``key`` later reopens the run (metric history
    continues).
    """

    def __init__(self) -> None:
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.created = False  # whether the last open() created the run (else reopened it)

    # lifecycle
    def open(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        description: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        root: str | Path = ".",
        code_dir: str | Path | None = None,
        key: str | None = None,
        reopen: bool = True,
        agree: Mapping[str, str] | None = None,
    ) -> str:
        """Create the run, or reopen ``run_id``; return the run id.

        ``key`` names the sequence (e.g. a hash of its config): without ``run_id``, the newest
        run of the experiment tagged with it is reopened (unless ``reopen`` is False: a new run
        is wanted), and a created run is tagged with it, so re-running a stage never makes a
        second run for one sequence. ``agree``: tags a reopened run must not contradict (a run
        holding one with another value is not reopened: the data it saw differ); they are set
        on the run. ``self.created`` says which happened. ``run_name`` and
        ``description`` (Markdown, the run page's description) are given to a new run only.

        ``params`` (flat; see :func:`flatten_params`) are logged once; on reopening, params
        already logged must have the same value (MLflow never overwrites a param), so a
        changed one is an error naming it. The git commit is logged as param ``git_commit``
        and tag ``mlflow.source.git.commit`` when ``code_dir`` (default: this package's folder)
        is in a git checkout. ``root`` is where the default SQLite store goes.
        """
        if self.run_id is not None:
            raise TrackingError(f"tracker already has run {self.run_id} open; close() it first")
        uri = resolve_tracking_uri(tracking_uri, root)
        if (db := sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if run_id is not None and (
            (run := self._existing_run(uri, run_id)).info.experiment_id
            != getattr(exp, "experiment_id", None)
        ):
            raise TrackingError(
                f"run {run_id} belongs to experiment id {run.info.experiment_id}, not to "
                f"experiment {experiment!r} in {uri}"
            )
        if exp is None:
            location = default_artifact_location(uri, experiment)
            exp_id = mlflow.create_experiment(experiment, location, {KIND_TAG: EXPERIMENT_KIND})
        else:
            exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        if exp is not None and KIND_TAG not in exp.tags:  # made before it was tagged, or by hand
            mlflow.set_experiment_tag(KIND_TAG, EXPERIMENT_KIND)
        if run_id is None and key is not None and reopen:
            run_id = self._find(exp_id, key, agree or {})
        logged = {} if run_id is None else mlflow.get_run(run_id).data.params
        self._check_params(logged, params or {})
        run_tags = {k: str(v) for k, v in {**(tags or {}), **(agree or {})}.items()}
        if run_id is None and key is not None:
            run_tags[KEY_TAG] = key
        if run_id is None and description:
            run_tags[DESCRIPTION_TAG] = description
        # start_run adds MLflow's context tags (mlflow.source.name/type, mlflow.user, git)
        if run_id is None:  # a new run; else reopen it as it is (name and tags kept)
            active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=run_tags)
        else:
            active = mlflow.start_run(run_id=run_id)
        self.created, self.tracking_uri = run_id is None, uri
        self.experiment_id, self.run_id = exp_id, active.info.run_id
        commit = git_commit(Path(__file__).parent if code_dir is None else code_dir)
        all_params = dict(params or {})
        if commit is not None:
            run_tags.setdefault(GIT_COMMIT_TAG, commit)
            all_params.setdefault("git_commit", commit)
        try:
            new = {k: _param_value(v) for k, v in all_params.items() if k not in logged}
            mlflow.log_params(new)
            mlflow.set_tags(run_tags)
        except BaseException:
            self.close("FAILED")  # never leave a half-opened run active
            raise
        return self.run_id

    @staticmethod
    def _find(experiment_id: str, key: str, agree: Mapping[str, str]) -> str | None:
        """The newest run tagged ``key`` whose tags do not contradict ``agree``."""
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", key):
            raise ValueError(f"run key {key!r}: use letters, digits and _ . : - only")
        runs = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.{KEY_TAG} = '{key}'",
            max_results=20,
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        for run in runs:
            held = run.data.tags
            if all(held.get(k, str(v)) == str(v) for k, v in agree.items()):
                return run.info.run_id
        return None

    @staticmethod
    def _existing_run(uri: str, run_id: str):
        try:
            run = mlflow.get_run(run_id)
        except MlflowException as err:
            raise TrackingError(
                f"cannot resume MLflow run {run_id!r}: no such run in {uri} ({err.message})"
            ) from err
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(f"cannot resume MLflow run {run_id!r}: it was deleted ({uri})")
        return run

    @staticmethod
    def _check_params(logged: Mapping[str, str], params: Mapping[str, Any]) -> None:
        changed = {
            k: (logged[k], _param_value(v))
            for k, v in params.items()
            if k in logged and logged[k] != _param_value(v)
        }
        if changed:
            lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise TrackingError(
                f"cannot resume the run with changed params (MLflow keeps params fixed): {lines}"
            )

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED``, ``KILLED``, or ``RUNNING`` for a sequence that
        goes on in the next stage); closing twice does nothing."""
        if self.run_id is None:
            return
        RunStatus.from_string(status)  # a clear error for an unknown status
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        elif status != "RUNNING":  # no longer the active run (ended or replaced meanwhile):
            MlflowClient().set_terminated(self.run_id, status=status)  # still marked, no error
        self.run_id = None

    def end_children(self, status: str = "KILLED") -> int:
        """Mark this run's child runs that are still ``RUNNING`` as ``status`` (a restored
        sweep: the trials that were running start again as new runs); return how many."""
        self._require()
        children = mlflow.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.run_id}' and attributes.status = 'RUNNING'",
            output_format="list",
        )
        for child in children:
            mlflow.start_run(run_id=child.info.run_id, nested=True)
            mlflow.end_run(status=status)
        return len(children)

    def __enter__(self) -> SequenceTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")

    def _require(self) -> None:
        if self.run_id is None:
            raise TrackingError("no MLflow run is open: call open() first")
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise TrackingError(f"run {self.run_id} is not MLflow's active run any more")

    # logging
    def log_task(self, task: int, metrics: Mapping[str, float]) -> list[str]:
        """Log one task's metrics at ``step=task``, once; return the keys left out.

        NaN values are not logged; the others to 6 significant digits
        (:func:`sdlora.core.metrics.tidy`). A key that already has a point at this step (a re-run
        stage logging its task again) keeps that first point: MLflow appends every logged
        point to the history, so logging it again would draw a second point at the step.
        """
        self._require()
        if isinstance(task, bool) or not isinstance(task, int | np.integer) or task < 0:
            raise ValueError(f"task must be a task index >= 0, got {task!r}")
        step = int(task)
        present = mlflow.get_run(self.run_id).data.metrics  # latest values: one call
        history = MlflowClient().get_metric_history  # the fluent API has no history call
        logged = {
            k for k in metrics if k in present and step in {m.step for m in history(self.run_id, k)}
        }
        new = {k: tidy(float(v)) for k, v in metrics.items()
               if k not in logged and v is not None and np.isfinite(float(v))}  # fmt: skip
        mlflow.log_metrics(new, step=step)
        return sorted(logged)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run (values as text)."""
        self._require()
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Copy files (or whole folders) into the run's artifacts, under ``artifact_path``."""
        self._require()
        for p in paths:
            path = Path(p)
            if path.is_dir():
                sub = path.name if artifact_path is None else f"{artifact_path}/{path.name}"
                mlflow.log_artifacts(str(path), sub)
            elif path.is_file():
                mlflow.log_artifact(str(path), artifact_path)
            else:
                raise FileNotFoundError(f"artifact {path} does not exist")

    def find_model(self, name: str, tags: Mapping[str, str]) -> str | None:
        """The id of a finished model this run logged as ``name`` with all of ``tags``, or None.

        A re-run stage uses it to keep the model it logged before (``tags`` holding, say, a
        hash of the weights) instead of logging the same model a second time.
        """
        self._require()
        outputs = mlflow.get_run(self.run_id).outputs
        for out in reversed(outputs.model_outputs if outputs is not None else []):
            model = mlflow.get_logged_model(out.model_id)
            if (
                model.name == name
                and str(model.status) == "READY"
                and all(model.tags.get(k) == str(v) for k, v in tags.items())
            ):
                return model.model_id
        return None

    def _discard_unfinished(self, name: str) -> None:
        """Delete the models of ``name`` this run left unfinished (a stage killed while logging
        one leaves it PENDING for ever): the model about to be logged replaces them."""
        self._require()
        left = mlflow.search_logged_models(
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}' "
            "AND status != 'READY'",
            output_format="list",
        )
        for half in left:
            MlflowClient().delete_logged_model(half.model_id)

    def log_model(
        self, model: Any, example_input: Any, name: str = "model", step: int = 0, **kwargs: Any
    ):
        """Log a plain torch model (e.g. ``SDLoRAViT.merge()``) with an input example.

        The signature is inferred from ``example_input`` (a tensor or array, batch first) and
        the model's output on it, so ``mlflow.pytorch.load_model(info.model_uri)`` gives the
        model back and ``mlflow.pyfunc`` can serve it. ``step``: the run's metrics at this step
        become the logged model's metrics (MLflow 3 links them), so pass the last task for a
        model of the whole sequence. Returns MLflow's ``ModelInfo``. A model of ``name`` this run
        left unfinished is deleted first (:meth:`_discard_unfinished`).
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        self._discard_unfinished(name)
        x = example_input
        x_np = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        was_training = getattr(model, "training", False)
        model.eval()
        with torch.no_grad():
            y = model(torch.from_numpy(x_np))
        model.train(was_training)
        signature = infer_signature(x_np, y.detach().cpu().numpy())
        kwargs.setdefault("pip_requirements", model_pip_requirements())
        return mlflow.pytorch.log_model(
            model, name=name, signature=signature, input_example=x_np, step=step, **kwargs
        )

    def log_classifier(
        self,
        timm_folder: str | Path,
        examples: Sequence[bytes],
        name: str = "classifier",
        step: int = 0,
        **kwargs: Any,
    ):
        """Log the merged model's timm folder as a served classifier: encoded images in, class
        names out (:mod:`sdlora.ops.classifier_model`, logged as a model from code, so serving
        needs no sdlora). ``examples``: a few encoded images, the input example; the signature
        comes from the model's answer to them. Returns MLflow's ``ModelInfo``. A model of
        ``name`` this run left unfinished is deleted first (:meth:`_discard_unfinished`)."""
        import mlflow.pyfunc
        import pandas as pd
        from mlflow.models import infer_signature

        from sdlora.ops import classifier_model as served

        self._discard_unfinished(name)
        artifacts = {served.TIMM_ARTIFACT: str(Path(timm_folder).resolve())}
        local = served.ImageClassifier()
        local.load_context(SimpleNamespace(artifacts=artifacts))
        example = pd.DataFrame({served.IMAGE_COLUMN: list(examples)})
        top_k = min(served.TOP_K, len(local.labels))  # the default: 5, or every class if fewer
        signature = infer_signature(example, local.predict(None, example), params={"top_k": top_k})
        kwargs.setdefault("pip_requirements", model_pip_requirements())
        with _quiet_logging():
            return mlflow.pyfunc.log_model(
                name=name, python_model=served.__file__, artifacts=artifacts,
                signature=signature, input_example=example, step=step, **kwargs,
            )  # fmt: skip

    # the Model Registry: a version per finished sequence, aliases for the gate's decision
    def register_version(self, name: str, model_id: str) -> str:
        """The version of registered model ``name`` that holds logged model ``model_id``: the
        one registered before (a re-run stage) or a new one."""
        self._require()
        uri = f"models:/{model_id}"  # a version's source (its model_id stays empty in SQLite)
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
        found = [v for v in versions if model_id in (v.model_id, v.source.removeprefix("models:/"))]
        return str(found[0].version if found else mlflow.register_model(uri, name).version)

    @staticmethod
    def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Set ``tags`` (values as text) on version ``version`` of ``name``."""
        client = MlflowClient()
        for k, v in tags.items():
            client.set_model_version_tag(name, str(version), k, str(v))

    @staticmethod
    def version(name: str, version: str | None = None, alias: str | None = None):
        """Version ``version`` (or the one under ``alias``) of ``name``; None if there is none."""
        client = MlflowClient()
        try:
            if alias is not None:
                return client.get_model_version_by_alias(name, alias)
            return client.get_model_version(name, str(version))
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model, version or alias
            raise

    @staticmethod
    def describe_version(name: str, version: str, text: str) -> None:
        """Set the description the registry's versions table shows beside the version."""
        MlflowClient().update_model_version(name, str(version), description=text)

    @staticmethod
    def set_alias(name: str, alias: str, version: str | None) -> None:
        """Point ``alias`` of ``name`` at ``version`` (None: remove the alias)."""
        client = MlflowClient()
        if version is not None:
            client.set_registered_model_alias(name, alias, str(version))
        elif alias in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, alias)
