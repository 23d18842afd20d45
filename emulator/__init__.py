"""The local emulator: a ``Pool`` whose engines are processes on this machine."""

from __future__ import annotations

from .local_pool import LocalPool

__all__ = ["LocalPool"]
