"""One exception type for every problem a user can fix, so callers catch one thing and the
message always names the problem and the fix (never a deep torch traceback)."""

from __future__ import annotations


class PersonaProbeError(ValueError):
    """Bad input or state that the user can fix; the message says how."""


class ModelNotFoundError(PersonaProbeError):
    """A model spec that is neither a known alias, a local checkpoint, nor a loadable HF id."""


class HookPointError(PersonaProbeError):
    """A hook name that does not parse, or a layer that the subject does not have."""


class StoreError(PersonaProbeError):
    """An activation store that is missing, incomplete, corrupted, or conflicts with a request."""


class PromptSetError(PersonaProbeError):
    """A prompt set that is empty, malformed, or too long for the model's context."""


class PersonaProbeWarning(UserWarning):
    """Something the package did on purpose that changes a result and that the user should
    see (a dropped empty reply, a truncated chat, a round that trained nothing). Its own class,
    so a test suite can turn it into an error while third-party UserWarnings stay quiet."""
