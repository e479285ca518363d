"""SAE training configuration: one plain dataclass per run, read from JSON, and the sae-lens
training SAE it describes (so every SAE trained here is a sae-lens SAE).

The SAE types a config may name are the rows of ``SAE_ARCHITECTURES``, one ``SAEArchitecture``
each: where its sae-lens training classes come from, which ``SAETrainConfig`` fields fill its
sae-lens config, and whether the sparse TopK step (``fast_topk``) may train it. Adding a type
is one ``register_sae_architecture`` call; ``tests/test_recipes.py`` registers a toy one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from persona_probe.configs import config_from_dict, read_json_config
from persona_probe.errors import PersonaProbeError


class SAEConfigError(PersonaProbeError):
    """A training config that cannot describe a run."""


@dataclass(frozen=True, eq=False)   # rows compare and hash by identity (fields holds a dict)
class SAEArchitecture:
    """A trainable SAE type. ``classes`` is its sae-lens ``(TrainingSAE subclass, its config
    dataclass)``; ``None`` takes them from sae-lens's own training registry under ``name``
    (``sae_lens.registry.get_sae_training_class``, looked up when an SAE is built). ``fields``
    maps a field of the sae-lens config to the ``SAETrainConfig`` field that fills it (other
    sae-lens fields go in a config's ``arch_options``). ``sparse_step``: the training SAE
    computes sae-lens's TopK loss, so ``fast_topk``'s sparse step may stand in for its
    ``training_forward_pass`` (checked again on the built SAE)."""

    name: str
    classes: tuple[type, type] | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    sparse_step: bool = False

    def training_classes(self) -> tuple[type, type]:
        if self.classes is not None:
            return self.classes
        from sae_lens.registry import get_sae_training_class

        return get_sae_training_class(self.name)


_TOPK_FIELDS = {"k": "k", "aux_loss_coefficient": "aux_loss_coefficient"}

#: The SAE types ``SAETrainConfig.architecture`` may name, in the order they are listed.
SAE_ARCHITECTURES: dict[str, SAEArchitecture] = {
    "topk": SAEArchitecture("topk", fields=_TOPK_FIELDS, sparse_step=True),
    "batchtopk": SAEArchitecture("batchtopk", fields=_TOPK_FIELDS),
    "jumprelu": SAEArchitecture("jumprelu", fields={"l0_coefficient": "l0_coefficient",
                                                    "l0_warm_up_steps": "sparsity_warm_up_steps"}),
    "standard": SAEArchitecture("standard", fields={"l1_coefficient": "l1_coefficient",
                                                    "l1_warm_up_steps": "sparsity_warm_up_steps"}),
}


#: The names of ``SAE_ARCHITECTURES`` ("topk", "batchtopk", "jumprelu", "standard" built in), a
#: live view: a registered type shows here too.
ARCHITECTURES = SAE_ARCHITECTURES.keys()
#: What ``SAETrainConfig.architecture`` holds: a name registered in ``SAE_ARCHITECTURES``.
Architecture = str


def register_sae_architecture(name: str, classes: tuple[type, type] | None = None, *,
                              fields: Mapping[str, str] | None = None,
                              sparse_step: bool = False,
                              replace: bool = False) -> SAEArchitecture:
    """Make ``name`` an SAE type ``SAETrainConfig.architecture`` may name (see
    ``SAEArchitecture``). Without ``classes`` the name must be one sae-lens registers for
    training. The classes and ``fields`` are checked now (each key a field of the sae-lens
    config, each value a field of ``SAETrainConfig``); a name that exists is refused unless
    ``replace=True``. Whether the trainer can train it is known after one step:
    ``tests/test_recipes.py::test_recipe_an_sae_type`` shows the check to copy."""
    where = f"register_sae_architecture({name!r})"
    if not isinstance(name, str) or not name or name != name.strip():
        raise SAEConfigError(f"an SAE architecture name is a non-empty name, got {name!r}")
    if name in SAE_ARCHITECTURES and not replace:
        raise SAEConfigError(f"SAE architecture {name!r} is already registered; pass "
                             "replace=True to change it")
    if classes is None:
        from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

        if name not in SAE_TRAINING_CLASS_REGISTRY:
            raise SAEConfigError(f"{where}: sae-lens registers no training SAE {name!r} (it has "
                                 f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}); pass "
                                 "classes=(TrainingSAE subclass, its config class)")
        sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[name]
    else:
        if not (isinstance(classes, tuple) and len(classes) == 2
                and all(isinstance(c, type) for c in classes)
                and dataclasses.is_dataclass(classes[1])):
            raise SAEConfigError(f"{where}: classes must be (TrainingSAE subclass, its config "
                                 f"dataclass), got {classes!r}")
        sae_cls, cfg_cls = classes
    fields = dict(fields or {})
    theirs = {f.name for f in dataclasses.fields(cfg_cls)}
    ours = {f.name for f in dataclasses.fields(SAETrainConfig)}
    bad = sorted(k for k in fields if k not in theirs)
    if bad:
        raise SAEConfigError(f"{where}: fields {bad} are not fields of {cfg_cls.__name__}; "
                             f"valid: {', '.join(sorted(theirs))}")
    bad = sorted(v for v in fields.values() if v not in ours)
    if bad:
        raise SAEConfigError(f"{where}: fields map to {bad}, which are not SAETrainConfig "
                             "fields; set such values through a config's arch_options instead")
    spec = SAEArchitecture(name, classes, fields, bool(sparse_step))
    SAE_ARCHITECTURES[name] = spec
    return spec


@dataclass
class SAETrainConfig:
    """Everything that decides a trained SAE. Defaults suit the embedded model on CPU."""

    store: str                                # activation store directory
    hook: str = "blocks.15.hook_resid_post"   # the store's hook whose rows are trained on
    architecture: Architecture = "topk"       # topk | batchtopk | jumprelu | standard | registered
    expansion_factor: int = 8                 # d_sae = expansion_factor · d_in, unless d_sae
    d_sae: int | None = None                  # number of latents (None: expansion_factor · d_in)
    k: int = 32                               # active latents per row (topk; batchtopk: mean)
    l1_coefficient: float = 5.0               # L1 sparsity penalty weight (standard)
    l0_coefficient: float = 1.0               # L0 sparsity penalty weight (jumprelu)
    sparsity_warm_up_steps: int = 0           # l1 / l0 coefficient warm-up (sae-lens semantics)
    aux_loss_coefficient: float = 1.0         # topk / batchtopk dead-latent loss
    arch_options: dict[str, Any] = field(default_factory=dict)  # other sae-lens config fields
    # sae-lens input normalization; expected_average_only_in scales inputs so their mean norm is
    # √d_in (folded into the saved weights); none leaves them as stored
    normalize_activations: str = "expected_average_only_in"
    # decoder bias at the start: mean (of the scaled training inputs) | zeros
    init_b_dec: Literal["mean", "zeros"] = "mean"
    training_tokens: int = 2_000_000          # rows trained on in all (steps = this // batch_size)
    batch_size: int = 4096                    # rows per optimizer step (split over torchrun ranks)
    lr: float = 3e-4                          # peak Adam learning rate
    lr_warm_up_steps: int = 0                 # linear warm-up from 0 over this many steps
    lr_decay_fraction: float = 0.2            # linear decay to lr_end over the last fraction
    lr_end: float | None = None               # learning rate at the end (None: lr / 10)
    adam_beta1: float = 0.9                   # Adam β1
    adam_beta2: float = 0.999                 # Adam β2
    max_grad_norm: float = 1.0                # gradient clipping norm (as sae-lens's trainer)
    dead_feature_window: int = 250            # steps without firing before a latent is dead
    holdout_fraction: float = 0.05            # of chats, never trained on; metrics use them
    roles: list[str] | None = None            # keep rows of these roles only (None: all)
    window_rows: int = 131072                 # shuffle window (rows in memory)
    checkpoint_every: int = 100               # steps between checkpoints (--resume point)
    log_every: int = 25                       # steps between lines of training_log.jsonl
    # training step: sparse (our TopK step; float32 topk only) | reference (sae-lens's own) |
    # auto (sparse where supported and on CPU, else reference)
    step: Literal["auto", "sparse", "reference"] = "auto"
    # float32 | float16 | bfloat16: the saved weights (trained in float32)
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"                      # auto | cpu | cuda | cuda:N (torchrun: own GPU)
    seed: int = 0                             # held-out split, batch order and SAE init

    def __post_init__(self) -> None:
        sae_architecture(self.architecture)      # an unregistered name is refused here
        for name in ("expansion_factor", "k", "training_tokens", "batch_size",
                     "checkpoint_every", "log_every", "dead_feature_window"):
            if int(getattr(self, name)) < 1:
                raise SAEConfigError(f"{name} must be a positive integer, not "
                                     f"{getattr(self, name)!r}")
        if self.training_tokens < self.batch_size:
            raise SAEConfigError(f"training_tokens ({self.training_tokens}) is less than one "
                                 f"batch ({self.batch_size})")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise SAEConfigError("lr_decay_fraction must lie in [0, 1]")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise SAEConfigError(f"save_dtype must be float32, float16 or bfloat16, not "
                                 f"{self.save_dtype!r}")
        if self.init_b_dec not in ("mean", "zeros"):
            raise SAEConfigError(f"init_b_dec must be mean or zeros, not {self.init_b_dec!r}")
        if self.step not in ("auto", "sparse", "reference"):
            raise SAEConfigError(f"step must be auto, sparse or reference, not {self.step!r}")

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to lr_end: a pure function of the step,
        so a resumed run needs no scheduler state."""
        lr_end = self.lr / 10 if self.lr_end is None else self.lr_end
        if self.lr_warm_up_steps and step < self.lr_warm_up_steps:
            return self.lr * (step + 1) / self.lr_warm_up_steps
        decay_steps = int(self.total_steps * self.lr_decay_fraction)
        start = self.total_steps - decay_steps
        if decay_steps and step >= start:
            return self.lr + (lr_end - self.lr) * (step - start + 1) / decay_steps
        return self.lr

    def coefficient_at(self, value: float, step: int) -> float:
        """sae-lens's CoefficientScheduler: linear warm-up from 0 over the warm-up steps."""
        w = self.sparsity_warm_up_steps
        return value * min(step / w, 1.0) if w > 0 else value

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> SAETrainConfig:
        raw = read_json_config(path, "SAE config", SAEConfigError)
        return cls.from_dict({**raw, **overrides}, where=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "SAE config") -> SAETrainConfig:
        return config_from_dict(cls, raw, where, SAEConfigError, required=("store",))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_training_sae(cfg: SAETrainConfig, d_in: int, metadata: dict[str, Any],
                       device: str = "cpu"):
    """The sae-lens training SAE for ``cfg``; unknown ``arch_options`` are an error naming the
    valid ones."""
    from sae_lens.saes.sae import SAEMetadata

    spec = sae_architecture(cfg.architecture)
    sae_cls, cfg_cls = spec.training_classes()
    d_sae = cfg.d_sae or cfg.expansion_factor * d_in
    kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32",
                              "device": device,
                              "normalize_activations": cfg.normalize_activations}
    kwargs |= {theirs: getattr(cfg, ours) for theirs, ours in spec.fields.items()}
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    bad = sorted(set(cfg.arch_options) - valid)
    if bad:
        raise SAEConfigError(f"arch_options {bad} are not fields of sae-lens's "
                             f"{cfg_cls.__name__}; valid: {', '.join(sorted(valid))}")
    kwargs |= cfg.arch_options
    kwargs["metadata"] = SAEMetadata(**metadata)  # free-form: model, hook, provenance
    return sae_cls(cfg_cls(**kwargs))


def sae_architecture(name: str) -> SAEArchitecture:
    """The registered row for ``name``."""
    if name not in SAE_ARCHITECTURES:
        raise SAEConfigError(f"architecture {name!r} is not one of "
                             f"{', '.join(SAE_ARCHITECTURES)} (more are added with "
                             "register_sae_architecture)")
    return SAE_ARCHITECTURES[name]
