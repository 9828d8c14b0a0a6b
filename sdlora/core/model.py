"""SDLoRAViT: a frozen timm ViT with SD-LoRA adapters, an incremental head and the task lifecycle.

Lifecycle (SPEC §2): ``begin_task(num_classes, rank)`` -> train -> ``end_task()`` (freeze the
direction, function unchanged) -> ... -> ``merge()`` gives a plain timm ViT for inference.
The model receives its method, a policy of :mod:`sdlora.core.methods` (built from params by
:meth:`SDLoRAViT.from_config`), which decides what each moment of the lifecycle does: SD-LoRA or
a baseline of SPEC §4, over the same modules.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from sdlora.config import ModelConfig
from sdlora.core.head import IncrementalHead
from sdlora.core.lora import DecoupledLoRA, Magnitudes, SDLoRAQKV
from sdlora.core.methods import Method, build_method
from sdlora.errors import BadInput


class ModelSettingError(BadInput, ValueError):
    """A ``model.*`` setting that does not fit the backbone (e.g. a block it does not have)."""


def check_blocks(blocks: list[int] | None, depth: int) -> list[int]:
    """``model.blocks`` as a list (None: every block), refused unless distinct indices of a
    backbone of ``depth`` blocks."""
    blocks = list(range(depth)) if blocks is None else list(blocks)
    if any(not 0 <= b < depth for b in blocks) or len(set(blocks)) != len(blocks):
        raise ModelSettingError(
            f"model.blocks = {blocks}: use distinct indices in 0..{depth - 1} (the backbone "
            f"has {depth} blocks)"
        )
    return blocks


class SDLoRAViT(nn.Module):
    """A timm ViT (headless, frozen) + SD-LoRA on q/v of the chosen blocks + incremental head."""

    def __init__(
        self,
        backbone: nn.Module,
        backbone_name: str,
        *,
        method: Method | None = None,
        blocks: list[int] | None = None,
        targets: tuple[str, ...] | list[str] = ("q", "v"),
        magnitude_scope: str = "task",
        magnitude_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.policy: Method = method if method is not None else build_method("sdlora")
        blocks = check_blocks(blocks, len(backbone.blocks))
        self.backbone = backbone.requires_grad_(False)
        self.backbone_name = backbone_name
        self.method = self.policy.name
        self.blocks = blocks
        self.targets = list(targets)
        self.compat = self.policy.compat
        self.magnitude_init = float(magnitude_init)
        self.magnitudes = Magnitudes(len(blocks) * len(self.targets), magnitude_scope)
        for i, b in enumerate(blocks):
            attn = backbone.blocks[b].attn
            index = {t: i * len(self.targets) + j for j, t in enumerate(self.targets)}
            attn.qkv = SDLoRAQKV(attn.qkv, self.targets, index, self.magnitudes)
        self.head = IncrementalHead(int(backbone.num_features))
        self.task_classes: list[int] = []  # classes per task, in order
        self.task_ranks: list[int] = []  # rank of the component each task added (0: none)
        self.kd_log: list[dict] = []  # sdlora_kd: each task's fit and decision (sdlora.core.kd)

    @classmethod
    def from_config(cls, backbone: nn.Module, backbone_name: str, cfg: ModelConfig) -> SDLoRAViT:
        """Build from the ``model:`` section of params: its method's policy, then the adapter."""
        return cls(
            backbone,
            backbone_name,
            method=build_method(cfg.method, cfg.compat, cfg.model_dump()),
            blocks=cfg.blocks,
            targets=cfg.targets,
            magnitude_scope=cfg.magnitude_scope,
            magnitude_init=cfg.magnitude_init,
        )

    # ---- structure -------------------------------------------------------------------------
    def adapters(self) -> list[SDLoRAQKV]:
        return [self.backbone.blocks[b].attn.qkv for b in self.blocks]

    def matrices(self) -> list[DecoupledLoRA]:
        """Every adapted matrix, in magnitude-column order."""
        return [a.lora[t] for a in self.adapters() for t in self.targets]

    def set_forward_path(self, path: str) -> None:
        """``auto`` (by cost), ``stacked`` or ``dense`` for every adapter (:class:`SDLoRAQKV`)."""
        for adapter in self.adapters():
            adapter.set_path(path)

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def magnitude_scope(self) -> str:
        return self.magnitudes.scope

    # ---- lifecycle -------------------------------------------------------------------------
    def begin_task(self, num_classes: int, rank: int) -> None:
        """Start task t: add its component (if the method adds one) and its classifier rows.

        Arguments are checked before anything changes, so a refused call leaves the model as it was.
        """
        t = self.num_tasks
        adds_component = self.policy.adds_component(t)
        limit = min((min(m.d_in, m.d_out) for m in self.matrices()), default=0)
        if adds_component and not 1 <= rank <= limit:
            raise ValueError(
                f"model.rank / model.rank_schedule: rank {rank} for task {t} does not fit the "
                f"adapted {self.head.in_features}-wide q/v matrices; use 1..{limit}"
            )
        if num_classes < 1:
            raise ValueError(f"task {t} has {num_classes} classes; a task needs at least one")
        self.policy.before_task(self, t)
        if adds_component:
            self.magnitudes.add_task(self.policy.magnitude_init(self))
            for m in self.matrices():
                m.add_current(rank, t)
        self.head.grow(num_classes, init=self.policy.head_init)
        self.task_classes.append(int(num_classes))
        self.task_ranks.append(int(rank) if adds_component else 0)
        self.set_trainable()

    def end_task(self) -> None:
        """End the current task as the method says (SD-LoRA: freeze its direction, SPEC §2)."""
        self.policy.end_task(self)

    def set_trainable(self) -> None:
        """Exactly the method's trainable set (SD-LoRA, SPEC §2: current pair, magnitudes,
        new head rows); everything else is frozen."""
        self.requires_grad_(False)
        for tensor in self.policy.trainable(self):
            tensor.requires_grad_(True)

    # ---- forward ---------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled pre-logit features: (B, C, H, W) -> (B, d)."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, d) -> (B, classes seen)."""
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- inference and accounting ----------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> nn.Module:
        """A plain timm ViT with every component folded into W0 and the head as its classifier."""
        memo: dict[int, Any] = {id(a): a.merged() for a in self.adapters()}
        merged = copy.deepcopy(self.backbone, memo)
        merged.reset_classifier(self.head.num_classes)
        w, b = self.head.full_weight()
        merged.head.weight.copy_(w)
        merged.head.bias.copy_(b)
        return merged.requires_grad_(False).eval()

    def storage(self) -> dict[str, int]:
        """What must be kept to run the model after this task (SPEC §5, "Storage")."""
        # Only tasks with a direction (stored or training) need their magnitude and factors:
        # a direction SD-LoRA-KD folded away leaves nothing that must be kept.
        mats = self.matrices()
        live = {t for m in mats for t in m.stored_tasks()}
        live |= {int(m.cur_task) for m in mats if m.A_cur is not None}
        alpha = self.magnitudes.alpha[[t for t in range(self.magnitudes.num_tasks) if t in live]]
        tensors: list[Tensor] = [alpha, *self.head.full_weight()]
        for m in mats:
            stored = [t for t in m.stored_tasks() if t < m.factor.numel()]
            tensors += [m.A, m.B, m.factor[stored]]
            if m.A_cur is not None:
                tensors += [m.A_cur, m.B_cur]
        params = sum(t.numel() for t in tensors)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        backbone = sum(p.numel() for n, p in self.backbone.named_parameters() if ".lora." not in n)
        return {"stored_params": params, "stored_bytes": nbytes, "backbone_params": backbone}
