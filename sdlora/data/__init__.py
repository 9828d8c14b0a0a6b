"""Datasets and class-incremental task splits.

Every benchmark, embedded (sklearn digits, font-rendered glyphs, rendered in memory) or on disk
(CIFAR-100, ImageNet-R/A, DomainNet, any ImageFolder), goes through the prepare stage
(``sdlora.data.prepare``) into Parquet task splits that ``sdlora.data.stream`` streams: the one
data path of training, evaluation and pre-training.
"""

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
from sdlora.data.source import CorruptImageError, DataError, Listing, Source
from sdlora.data.tasks import ImageSet, class_order, split_classes

__all__ = [
    "DIGIT_NAMES",
    "HELDOUT_FONTS",
    "LATIN",
    "NONLATIN",
    "PRETRAIN_FONTS",
    "CorruptImageError",
    "DataError",
    "ImageSet",
    "Jitter",
    "Listing",
    "Source",
    "class_order",
    "fonts_with",
    "load_digits",
    "load_glyphs",
    "load_pretrain_letters",
    "render_glyphs",
    "split_classes",
]
