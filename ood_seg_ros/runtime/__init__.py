"""Inference backends behind one small interface (see :mod:`.base`)."""

from .base import auto_backend, Backend, BACKENDS, make_backend

__all__ = ['auto_backend', 'Backend', 'BACKENDS', 'make_backend']
