"""Pick the configured benchmark and cut it into class-incremental tasks."""

from __future__ import annotations

from sdlora.config import DataConfig
from sdlora.data.digits import load_digits
from sdlora.data.glyphs import load_glyphs
from sdlora.data.tasks import TaskSplit, make_task_splits


def load_task_splits(cfg: DataConfig, seed: int) -> list[TaskSplit]:
    """The benchmark of ``cfg.dataset`` as tasks (class order from ``seed``, SPEC §1)."""
    if cfg.dataset == "digits":
        train, test = load_digits(test_fraction=cfg.test_fraction)
    elif cfg.dataset == "glyphs":
        train, test = load_glyphs(cfg.train_per_class, cfg.test_per_class, size=cfg.image_size)
    else:  # the config's Literal makes this unreachable; keep the error explicit anyway
        raise ValueError(f"data.dataset = {cfg.dataset!r}: unknown dataset")
    return make_task_splits(train, test, seed=seed, init_cls=cfg.init_cls, increment=cfg.increment)
