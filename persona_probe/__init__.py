"""persona_probe: persona features in language models.

model -> activations -> SAE/directions -> interventions -> evals -> figures (see DESIGN.md).
"""

from persona_probe.capture import CaptureConfig, capture
from persona_probe.chat import EncodedChat, encode_chat
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import HookPoint, parse_hook, residual_hooks
from persona_probe.models import DEFAULT_MODEL, Subject, load_subject
from persona_probe.prompts import PromptItem, load_prompts
from persona_probe.store import ActivationStore

__all__ = [
    "DEFAULT_MODEL", "ActivationStore", "CaptureConfig", "EncodedChat", "HookPoint",
    "PersonaProbeError", "PromptItem", "Subject", "capture", "encode_chat", "load_prompts",
    "load_subject", "parse_hook", "residual_hooks",
]
__version__ = "0.1.0"
