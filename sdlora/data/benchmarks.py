"""Pick the configured benchmark as a Source for the prepare stage (the only way data comes in)."""

from __future__ import annotations

from sdlora.config import DataConfig
from sdlora.data.digits import load_digits
from sdlora.data.glyphs import load_glyphs
from sdlora.data.source import DataError, Source, imageset_source
from sdlora.data.tasks import ImageSet

EMBEDDED_ORIGIN = {"digits": "embedded: sklearn digits", "glyphs": "embedded: rendered glyphs"}


def _embedded(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Train and test sets of an embedded benchmark (built in memory, nothing on disk)."""
    if cfg.dataset == "digits":
        return load_digits(test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    return load_glyphs(cfg.train_per_class, cfg.test_per_class, size=cfg.image_size)


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
    if cfg.dataset in ("imagenet-r", "imagenet-a", "imagefolder"):
        from sdlora.data.imagefolder import read_imagefolder

        return read_imagefolder(cfg.root, cfg.dataset, cfg.test_fraction, cfg.split_seed)
    raise ValueError(f"data.dataset = {cfg.dataset!r}: unknown dataset")
