"""
Backbone registry: name -> :class:`BackboneSpec` (builder and ImageNet weight loader).

A family lives in one module that defines its backbones and exports them as a
``BACKBONES`` dict; registering the family is one line below. Everything else (the
model config check, ``ood-seg train --backbone``, the network) reads this registry.
"""

from typing import Dict

from . import efficientnet_lite
from .base import Backbone, BackboneSpec, check_state
from ...errors import OodSegError

BACKBONES: Dict[str, BackboneSpec] = {}
BACKBONES.update(efficientnet_lite.BACKBONES)


def backbone_names() -> tuple:
    """Names of the registered backbones."""
    return tuple(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """Return the registered backbone ``name``; OodSegError naming the choices otherwise."""
    if name not in BACKBONES:
        raise OodSegError(f'unknown backbone {name!r}; choose one of '
                          f'{", ".join(backbone_names())}')
    return BACKBONES[name]


def build_backbone(name: str, output_stride: int = 16) -> Backbone:
    """Build backbone ``name`` with random weights at ``output_stride``."""
    return backbone_spec(name).build(output_stride)


def load_imagenet(backbone: Backbone, name: str) -> dict:
    """Copy ImageNet weights into ``backbone`` (built as ``name``); counts for logging."""
    return backbone_spec(name).load_imagenet(backbone)


__all__ = ['Backbone', 'BackboneSpec', 'BACKBONES', 'backbone_names', 'backbone_spec',
           'build_backbone', 'check_state', 'load_imagenet']
