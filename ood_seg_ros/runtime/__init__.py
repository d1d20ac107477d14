"""Inference backends behind one small interface (see :mod:`.base`)."""

from .base import Backend, make_backend

__all__ = ['Backend', 'make_backend']
