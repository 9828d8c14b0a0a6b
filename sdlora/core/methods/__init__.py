"""Continual-learning methods as policies over one model and one training loop.

A method is a :class:`Method` subclass that says what it does differently at the moments of the
task lifecycle (STYLE: Mammoth's ``begin_task`` / ``end_task``; the hooks are listed in
:mod:`sdlora.core.methods.base`). :func:`register_method` is the list of names, as timm's
``register_model`` is: ``model.method`` in params is validated against it and nothing else
enumerates the methods.

**Adding a method** is one file in this folder plus its tests: a class decorated with
``@register_method``, with a ``name`` and the hooks it changes. If it has settings, it declares
them as a pydantic model in its ``Params`` attribute; every field becomes a ``model.<field>``
key of params.yaml, validated by that model (SD-LoRA-KD's ``kd_tau`` and ``kd_fold``,
:mod:`sdlora.core.methods.kd`). Every module of this folder is imported here, so the file
registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from sdlora.core.methods.base import (
    COMPATS,
    METHODS,
    Method,
    build_method,
    method_class,
    param_models,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "COMPATS", "METHODS", "Method", "build_method", "method_class", "param_models",
    "register_method",
]  # fmt: skip
