"""The layer convention every Direction and SAE records.

Layers here are always TransformerLens hook names (see ``persona_probe.hooks``): a Direction's
``layers`` and an SAE's ``hook_name`` are read in this convention, and an artifact from another
tool is translated into it on import (``persona_probe.interop``), the source's own indexing being
kept beside it in the artifact's metadata. One name, so a file can say which convention it uses
and a reader can refuse one it does not know instead of silently shifting every layer by one.
"""

from __future__ import annotations

from persona_probe.errors import PersonaProbeError

LAYER_CONVENTION = "transformer_lens"

CONVENTIONS: dict[str, str] = {
    LAYER_CONVENTION: (
        "blocks.{L}.hook_resid_pre is the input of decoder layer L (model.layers[L]) and "
        "blocks.{L}.hook_resid_post its output, so resid_post at L = HF hidden_states[L+1] and "
        "resid_pre at L = hidden_states[L]; at the last layer HF's hidden_states[-1] is taken "
        "after the final norm, resid_post before it"),
}


def check_convention(name: object, where: str) -> str:
    """``name`` if it is a known layer convention; else an error naming the known ones."""
    if not isinstance(name, str) or name not in CONVENTIONS:
        raise PersonaProbeError(
            f"{where}: unknown layer convention {name!r}; this version reads "
            f"{', '.join(sorted(CONVENTIONS))} (TransformerLens hook names). Re-export the "
            "artifact in that convention, or import it with persona_probe.interop, which "
            "translates other tools' layer indices")
    return str(name)
