"""Backends: where sessions and locks live. ``create_backend`` picks one from the settings."""

from __future__ import annotations

from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.config import Settings

__all__ = ["Acquisition", "Backend", "KeyInfo", "SessionInfo", "create_backend"]


def create_backend(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names: ``consul`` (default), ``memory://`` or ``file:///dir``."""
    scheme = settings.backend.split("://", 1)[0]
    if scheme == "memory":
        from singleton.backends.memory import MemoryBackend

        return MemoryBackend()
    if scheme == "file":
        from singleton.backends.file import FileBackend

        return FileBackend.from_url(settings.backend)
    from singleton.backends.consul import ConsulBackend

    return ConsulBackend(settings.consul)
