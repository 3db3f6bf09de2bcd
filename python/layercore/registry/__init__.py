"""Talking to OCI distribution registries: references, auth, push, pull and copy.

This subpackage sits above the store: it may import ``layercore.store``, ``image``, ``imageref``
and ``errors``; nothing below it imports it.
"""

from layercore.errors import InvalidReferenceError
from layercore.imageref import DEFAULT_REGISTRY, Reference

__all__ = ["DEFAULT_REGISTRY", "InvalidReferenceError", "Reference"]
