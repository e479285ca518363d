"""The LoRA adapter and optimiser settings every trainer here shares (SFT finetune, DPO,
conscience DPO), defined and validated once.

Why flat fields plus typed views, not nested configs: every config file and every committed
stage fingerprint spells these as top-level keys (``lora_r``, ``lr``, …), and nesting them
would change what existing files mean and invalidate every finished finetune stage. So a
config keeps its flat fields (its own defaults), and ``LoRASettings.of(cfg)`` /
``OptimizerSettings.of(cfg)`` read them into one typed, validated object; the peft
``LoraConfig`` is built from it in one place (``LoRASettings.peft_config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from persona_probe.errors import PersonaProbeError


class TrainingSettingsError(PersonaProbeError):
    """LoRA or optimiser settings that no trainer can use."""


@dataclass(frozen=True)
class LoRASettings:
    r: int = 16                                   # rank
    alpha: int | float = 32                       # scaling numerator (scale = alpha / r)
    dropout: float = 0.0                          # dropout on the LoRA path
    target_modules: str | tuple[str, ...] = "all-linear"   # peft's names, or 'all-linear'

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise TrainingSettingsError(f"lora_r must be a positive integer, not {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                and self.alpha > 0):
            raise TrainingSettingsError(f"lora_alpha must be a positive number, not "
                                        f"{self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise TrainingSettingsError(f"lora_dropout must lie in [0, 1), not {self.dropout!r}")
        mods = self.target_modules
        if not (isinstance(mods, str) and mods) and not (
                isinstance(mods, (list, tuple)) and mods and all(isinstance(m, str) and m
                                                                 for m in mods)):
            raise TrainingSettingsError(f"target_modules must be 'all-linear' or a non-empty "
                                        f"list of module names, not {mods!r}")

    @classmethod
    def of(cls, cfg: Any) -> LoRASettings:
        """The settings a config spells as ``lora_r``, ``lora_alpha`` and, where it has them,
        ``lora_dropout`` and ``target_modules``."""
        mods = getattr(cfg, "target_modules", "all-linear")
        return cls(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=getattr(cfg, "lora_dropout", 0.0),
                   target_modules=mods if isinstance(mods, str) else tuple(mods))

    def peft_config(self):
        """The peft ``LoraConfig`` of a causal-LM adapter with these settings."""
        from peft import LoraConfig

        mods = self.target_modules if isinstance(self.target_modules, str) \
            else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=mods, task_type="CAUSAL_LM")


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float                                     # peak learning rate
    max_steps: int                                # optimiser steps
    batch_size: int                               # examples per step
    seed: int = 0                                 # adapter init and data order

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float))
                                             and math.isfinite(self.lr) and self.lr > 0):
            raise TrainingSettingsError(f"lr must be a positive number, not {self.lr!r}")
        for name in ("max_steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainingSettingsError(f"{name} must be an integer >= 1, not {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TrainingSettingsError(f"seed must be an integer, not {self.seed!r}")

    @classmethod
    def of(cls, cfg: Any) -> OptimizerSettings:
        return cls(lr=cfg.lr, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                   seed=getattr(cfg, "seed", 0))


def check_training_settings(cfg: Any, error: type[PersonaProbeError]) -> None:
    """Validate a config's LoRA and optimiser fields, raising its own error type (so callers
    that catch e.g. ``FinetuneError`` keep working)."""
    try:
        LoRASettings.of(cfg)
        OptimizerSettings.of(cfg)
    except TrainingSettingsError as exc:
        raise error(str(exc)) from None
