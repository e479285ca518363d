"""persona_probe: persona features in language models.

model -> activations -> SAE/directions -> interventions -> evals -> figures (see docs/DESIGN.md).
"""

from persona_probe.capture import CaptureConfig, capture, mean_activations
from persona_probe.chat import EncodedChat, encode_chat
from persona_probe.errors import PersonaProbeError
from persona_probe.hooks import HookPoint, parse_hook, residual_hooks
from persona_probe.models import DEFAULT_MODEL, Subject, load_subject
from persona_probe.prompts import PromptItem, load_prompts
from persona_probe.directions import Direction, persona_vector
from persona_probe.interventions import SAELatents, ablate, steer
from persona_probe.store import ActivationStore
from persona_probe.traits import Trait, load_trait, trait_questions

__all__ = [
    "DEFAULT_MODEL", "ActivationStore", "CaptureConfig", "Direction", "EncodedChat", "HookPoint",
    "PersonaProbeError", "PromptItem", "SAELatents", "Subject", "Trait", "ablate", "capture",
    "encode_chat", "load_prompts", "load_subject", "load_trait", "mean_activations",
    "parse_hook", "persona_vector", "residual_hooks", "steer", "trait_questions",
]
__version__ = "0.1.0"
