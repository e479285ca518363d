"""LoRA and optimiser settings are validated once for every trainer and turned into one peft
config; each config keeps raising its own error type."""

from __future__ import annotations

import math

import pytest

from persona_probe.training.conscience import ConscienceDPOConfig
from persona_probe.training.dpo import DPOError, DPOSettings
from persona_probe.training.finetune import FinetuneConfig, FinetuneError
from persona_probe.training.settings import (LoRASettings, OptimizerSettings,
                                             TrainingSettingsError)


@pytest.mark.parametrize("bad, match", [
    ({"lora_r": 0}, "lora_r"), ({"lora_r": 2.5}, "lora_r"), ({"lora_alpha": -1}, "lora_alpha"),
    ({"lora_dropout": 1.0}, "lora_dropout"), ({"target_modules": []}, "target_modules"),
    ({"lr": math.nan}, "lr"), ({"lr": 0}, "lr"), ({"seed": "zero"}, "seed"),
])
def test_each_config_refuses_bad_settings_with_its_own_error(bad, match):
    with pytest.raises(FinetuneError, match=match):
        FinetuneConfig(data="chats.jsonl", **bad)
    dpo_bad = {k: v for k, v in bad.items() if k in DPOSettings.__dataclass_fields__}
    if dpo_bad:
        with pytest.raises(DPOError, match=match):
            DPOSettings(**dpo_bad)
    conscience_bad = {k: v for k, v in bad.items()
                      if k in ConscienceDPOConfig.__dataclass_fields__}
    if conscience_bad:
        with pytest.raises(DPOError, match=match):
            ConscienceDPOConfig(**conscience_bad)


def test_the_peft_config_is_the_one_each_trainer_built_before():
    from peft import LoraConfig

    def same(a, b):
        keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type")
        return all(getattr(a, k) == getattr(b, k) for k in keys)

    ft = LoRASettings.of(FinetuneConfig(data="chats.jsonl")).peft_config()
    assert same(ft, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                               target_modules="all-linear", task_type="CAUSAL_LM"))
    dpo = LoRASettings.of(DPOSettings(lora_r=8, lora_alpha=16)).peft_config()
    assert same(dpo, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                task_type="CAUSAL_LM"))
    listed = LoRASettings.of(FinetuneConfig(data="c.jsonl", target_modules=["q_proj", "v_proj"]))
    assert set(listed.peft_config().target_modules) == {"q_proj", "v_proj"}
    opt = OptimizerSettings.of(DPOSettings(lr=1e-4, max_steps=3, batch_size=2, seed=5))
    assert (opt.lr, opt.max_steps, opt.batch_size, opt.seed) == (1e-4, 3, 2, 5)
    with pytest.raises(TrainingSettingsError, match="batch_size"):
        OptimizerSettings(lr=1e-3, max_steps=1, batch_size=0)
