"""``reproduce --smoke``: a preset's own code path at toy size on CPU, with no dataset on disk.

The preset's reader reads a generated stand-in written in the dataset's own layout, with the
dataset's class count (:mod:`sdlora.data.standin`); only its first two tasks are trained
(``data.tasks``, the seeded order's first two tasks by name: the same splits the seeded order
gives, SPEC §1), one epoch of a few batches of 32-pixel images, on a random-init ViT of the
preset's timm architecture shrunk to two blocks. Everything else (the preset's optimizer, lr,
transforms, normalisation, compat, magnitudes, the prepare stage, Ray Train, evaluation,
MLflow, the table) is the full run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sdlora.data.benchmarks import open_source
from sdlora.data.tasks import class_order, split_classes
from sdlora.reproduce.presets import Preset

SMOKE_TASKS = 2
SMOKE_IMAGE = 32  # pixels: the model input and the generated images' side
SMOKE_VIT = {"img_size": SMOKE_IMAGE, "embed_dim": 48, "depth": 2, "num_heads": 2}


def write_standin(preset: Preset, root: Path) -> dict[str, Any]:
    """Generate the preset's dataset under ``root`` (once; kept for a re-run) in its reader's
    layout; return the ``data.*`` changes that point the preset at it."""
    from sdlora.data import standin

    dataset = preset.params["data"]["dataset"]
    classes = int(preset.images["classes"])
    size = (SMOKE_IMAGE + 8, SMOKE_IMAGE)  # not square: the transforms must resize and crop
    done = root / ".complete"
    changes: dict[str, Any] = {"data.root": str(root)}
    if dataset == "domainnet":
        changes["data.domains"] = ["clipart", "sketch"]  # two of the six: fewer files
    if done.is_file():
        return changes
    if root.exists():  # a write cut short: start again
        shutil.rmtree(root)
    if dataset == "cifar100":
        standin.write_cifar100(root, classes, train_per_class=2, test_per_class=1)
    elif dataset in ("imagenet-r", "imagenet-a", "imagefolder"):
        standin.write_folders(root, standin.wordnet_ids(classes), 2, 1, size=size)
    elif dataset == "domainnet":
        names = [f"class_{i:03d}" for i in range(classes)]
        standin.write_domainnet(root, changes["data.domains"], names, 1, 1, size=size)
    elif dataset == "cub200":
        standin.write_cub200(root, classes, train_per_class=2, test_per_class=1, size=size)
    else:
        raise ValueError(f"no stand-in for dataset {dataset!r}")
    done.write_text("")
    return changes


def first_tasks(preset: Preset, data_changes: dict[str, Any], seed: int) -> list[list[str]]:
    """The first :data:`SMOKE_TASKS` tasks of the seeded class order, by class name."""
    from sdlora.config import DataConfig

    data = DataConfig.model_validate(
        {**preset.params["data"], **{k.split(".", 1)[1]: v for k, v in data_changes.items()}}
    )
    names = open_source(data).class_names
    tasks = split_classes(class_order(len(names), seed), data.init_cls, data.increment)
    return [[names[i] for i in task] for task in tasks[:SMOKE_TASKS]]


def smoke_changes(preset: Preset, data_changes: dict[str, Any], seed: int) -> dict[str, Any]:
    """The dotted changes that make a preset's run a smoke run (module docstring)."""
    kwargs = {**preset.params["backbone"].get("kwargs", {}), **SMOKE_VIT}
    return {
        **data_changes,
        "data.tasks": first_tasks(preset, data_changes, seed),
        "data.image_size": SMOKE_IMAGE,
        "data.workers": 0,
        "backbone.weights": None,  # random init: nothing downloaded
        "backbone.kwargs": kwargs,
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.eval_batch_size": 64,
        "train.threads": 1,
        "device": "cpu",
        "ray.use_gpu": False,
        "ray.num_workers": 1,
        "ray.cpus_per_worker": 1,
    }


def trim_schedule(changes: dict[str, Any]) -> dict[str, Any]:
    """A variant's changes with rank-schedule entries past the smoke's tasks dropped."""
    schedule = changes.get("model.rank_schedule")
    if schedule is None:
        return changes
    return {**changes, "model.rank_schedule": [e for e in schedule if e[0] < SMOKE_TASKS]}
