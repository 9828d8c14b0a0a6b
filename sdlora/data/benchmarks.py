"""Pick the configured benchmark as a Source for the prepare stage (the only way data comes in)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np

from sdlora.config import DataConfig
from sdlora.data.digits import DIGIT_NAMES, load_digits
from sdlora.data.glyphs import NONLATIN, load_glyphs
from sdlora.data.renditions import GLYPHS_R_RENDITIONS
from sdlora.data.source import DataError, Source, imageset_source
from sdlora.data.tasks import ImageSet

EMBEDDED_ORIGIN = {
    "digits": "embedded: sklearn digits",
    "glyphs": "embedded: rendered glyphs",
    "glyphs-r": "embedded: rendered glyphs in renditions",
}
# what their loaders name the classes
EMBEDDED_NAMES = {"digits": DIGIT_NAMES, "glyphs": NONLATIN, "glyphs-r": NONLATIN}


def _embedded(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Train and test sets of an embedded benchmark (built in memory, nothing on disk)."""
    if cfg.dataset == "digits":
        return load_digits(test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    renditions = None  # glyphs: as the backbone saw its letters
    if cfg.dataset == "glyphs-r":
        renditions = GLYPHS_R_RENDITIONS if cfg.renditions is None else cfg.renditions
    return load_glyphs(
        cfg.train_per_class, cfg.test_per_class, size=cfg.image_size, renditions=renditions
    )


def open_source(cfg: DataConfig) -> Source:
    """The benchmark of ``cfg.dataset`` listed (not yet read) for the prepare stage."""
    if cfg.dataset in EMBEDDED_ORIGIN:
        train, test = _embedded(cfg)
        return imageset_source(cfg.dataset, train, test, EMBEDDED_ORIGIN[cfg.dataset])
    if cfg.root is None:
        raise DataError(f"data.root is required for dataset {cfg.dataset!r}")
    if cfg.dataset == "cifar100":
        from sdlora.data.cifar import read_cifar100

        return read_cifar100(cfg.root)
    if cfg.dataset == "domainnet":
        from sdlora.data.domainnet import read_domainnet

        return read_domainnet(cfg.root, cfg.domains)
    if cfg.dataset == "cub200":
        from sdlora.data.cub import read_cub200

        return read_cub200(cfg.root)
    if cfg.dataset in ("imagenet-r", "imagenet-a", "imagefolder"):
        from sdlora.data.imagefolder import read_imagefolder

        return read_imagefolder(cfg.root, cfg.dataset, cfg.test_fraction, cfg.split_seed)
    raise ValueError(f"data.dataset = {cfg.dataset!r}: unknown dataset")


def class_names(cfg: DataConfig) -> tuple[str, ...]:
    """The classes of ``cfg.dataset`` by name, without rendering an embedded one's images (an
    on-disk one is listed, not read)."""
    if cfg.dataset in EMBEDDED_NAMES:
        return EMBEDDED_NAMES[cfg.dataset]
    return open_source(cfg).class_names


def named_tasks(names: Sequence[str], tasks: list[list[str]], dataset: str) -> list[np.ndarray]:
    """``data.tasks`` as indices into ``names``; a DataError names a class ``dataset`` (its
    description, for the message) lacks, with the closest names it has."""
    index = {name: i for i, name in enumerate(names)}
    for t, task in enumerate(tasks):
        for name in task:
            if name not in index:
                close = difflib.get_close_matches(name, list(index), n=3)
                more = " ..." if len(index) > 12 else ""
                hint = f"did you mean {close}?" if close else (
                    f"its classes: {list(index)[:12]}{more}")  # fmt: skip
                raise DataError(
                    f"data.tasks: class {name!r} (task {t}) is not in {dataset}; {hint}"
                )
    return [np.array([index[n] for n in task], dtype=np.int64) for task in tasks]


def describe(cfg: DataConfig) -> str:
    """``dataset 'name'`` and, for an on-disk one, where it lies: for messages."""
    return f"dataset {cfg.dataset!r}" + (f" at {cfg.root}" if cfg.root else "")


def check_named_tasks(cfg: DataConfig) -> None:
    """Refuse ``data.tasks`` naming a class the dataset lacks, before anything is prepared."""
    if cfg.tasks is not None:
        named_tasks(class_names(cfg), cfg.tasks, describe(cfg))
