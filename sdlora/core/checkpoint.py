"""Save and load the adapter state (components, magnitudes, head; never the backbone).

One safetensors file; its metadata holds a JSON header (key ``sdlora``) with the format version,
the backbone, the structure (classes and ranks per task), the settings that must match on load,
and the SHA-256 of the tensors (:func:`tensor_digest`): a file damaged inside its data is refused
on load, not trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sdlora.core.model import SDLoRAViT
from sdlora.errors import BadInput
from sdlora.files import atomic_path

FORMAT_VERSION = 2  # 2: the header holds the tensors' SHA-256
_MATCH = ("backbone", "backbone_shape", "method", "magnitude_scope", "compat", "targets", "blocks")


class AdapterMismatchError(BadInput, ValueError):
    """An adapter file that does not belong to this backbone or model configuration."""


class AdapterDamagedError(BadInput, ValueError):
    """An adapter file whose tensors are not the ones it was saved with."""


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_adapter_key(key: str) -> bool:
    return not key.startswith("backbone.") or ".lora." in key


def adapter_state(model: SDLoRAViT) -> dict[str, Tensor]:
    """Every tensor of the model that is not the frozen backbone."""
    return {k: v for k, v in model.state_dict().items() if _is_adapter_key(k)}


def header(model: SDLoRAViT) -> dict[str, Any]:
    """The JSON header describing ``model``'s adapter state."""
    bb = model.backbone
    return {
        "format_version": FORMAT_VERSION,
        "backbone": model.backbone_name,
        "backbone_shape": {"embed_dim": int(bb.num_features), "depth": len(bb.blocks)},
        "method": model.method,
        "magnitude_scope": model.magnitude_scope,
        "compat": model.compat,
        "targets": model.targets,
        "blocks": model.blocks,
        "magnitude_init": model.magnitude_init,
        "task_classes": model.task_classes,
        "task_ranks": model.task_ranks,
        "num_classes": model.head.num_classes,
        **({"kd_log": model.kd_log} if model.kd_log else {}),  # sdlora_kd's decisions
    }


def save_adapter(model: SDLoRAViT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter state atomically (temp file + rename); ``extra`` joins the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in adapter_state(model).items()}
    head = header(model) | {"extra": extra or {}, "sha256": tensor_digest(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sdlora": json.dumps(head)})
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of an adapter file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"adapter file not found: {path}") from None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors adapter file ({err})") from err
    if "sdlora" not in meta:
        raise ValueError(f"{path}: safetensors file without an sdlora header (not an adapter)")
    head = json.loads(meta["sdlora"])
    if head.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: adapter format version {head.get('format_version')}, this sdlora reads "
            f"version {FORMAT_VERSION} (version 1 files carry no checksum): train it again"
        )
    return head


def load_adapter(model: SDLoRAViT, path: str | Path) -> dict[str, Any]:
    """Load an adapter file into a freshly built ``model``; returns the header.

    The model must have the same backbone and settings (checked; the error names both sides).
    Its task structure (ranks, classes) is rebuilt from the file.
    """
    path = Path(path)
    head = read_header(path)
    mine = header(model)
    diffs = [
        f"{k}: file has {head.get(k)!r}, model has {mine[k]!r}"
        for k in _MATCH
        if head.get(k) != mine[k]
    ]
    if diffs:
        raise AdapterMismatchError(
            f"adapter {path} does not fit this model:\n  " + "\n  ".join(diffs)
        )
    device = model.head.old_weight.device
    # Each tensor is copied out of the file's buffer into PyTorch's own (64-byte aligned) memory,
    # where a trained tensor lives: a view into the file sits at its offset there, and MKL's
    # sgemm rounds by alignment (A @ A.T of a current pair differed in the last bit), so a
    # restored run's end_task would not give the bytes the trained run gave.
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open API)
    if tensor_digest(tensors) != head.get("sha256"):
        raise AdapterDamagedError(
            f"{path}: damaged adapter: its tensors do not match the checksum saved with them; "
            "re-run the stage that wrote it (DVC: `dvc checkout` restores it from the cache)"
        )
    expected = set(adapter_state(model))
    optional = {k for k in expected if k.endswith((".A_cur", ".B_cur"))}
    missing = expected - optional - set(tensors)
    unknown = {k for k in tensors if k not in expected and not k.endswith((".A_cur", ".B_cur"))}
    if missing or unknown:
        raise ValueError(
            f"{path}: corrupt adapter: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unknown)[:5]}"
        )
    for key in optional - set(tensors):  # the file was saved between tasks: no current pair
        _assign(model, key, None)
    for key, value in tensors.items():
        _assign(model, key, value)
    model.task_classes = list(head["task_classes"])
    model.task_ranks = list(head["task_ranks"])
    model.kd_log = list(head.get("kd_log", []))
    model.set_trainable()
    return head


def _assign(model: nn.Module, key: str, value: Tensor | None) -> None:
    """Replace one parameter or buffer by ``value`` (any shape): the file defines the structure."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    if name in module._parameters:
        module._parameters[name] = None if value is None else nn.Parameter(value)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        raise ValueError(f"{key} is neither a parameter nor a buffer of the model")
