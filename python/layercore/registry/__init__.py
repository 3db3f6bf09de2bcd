"""Talking to OCI distribution registries: references today; auth, push and pull to come.

This subpackage sits above the store: it may import ``layercore.store``, ``image`` and
``errors``; nothing below it imports it.
"""

from layercore.registry.reference import DEFAULT_REGISTRY, InvalidReferenceError, Reference

__all__ = ["DEFAULT_REGISTRY", "InvalidReferenceError", "Reference"]
