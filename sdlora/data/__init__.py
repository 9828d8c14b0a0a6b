"""Embedded offline datasets (sklearn digits, font-rendered glyphs) and CIL task splits."""

from sdlora.data.digits import DIGIT_NAMES, load_digits
from sdlora.data.glyphs import (
    HELDOUT_FONTS,
    LATIN,
    NONLATIN,
    PRETRAIN_FONTS,
    Jitter,
    fonts_with,
    load_glyphs,
    load_pretrain_letters,
    render_glyphs,
)
from sdlora.data.tasks import ImageSet, TaskSplit, class_order, make_task_splits, split_classes

__all__ = [
    "DIGIT_NAMES",
    "HELDOUT_FONTS",
    "LATIN",
    "NONLATIN",
    "PRETRAIN_FONTS",
    "ImageSet",
    "Jitter",
    "TaskSplit",
    "class_order",
    "fonts_with",
    "load_digits",
    "load_glyphs",
    "load_pretrain_letters",
    "make_task_splits",
    "render_glyphs",
    "split_classes",
]
