"""Talking to OCI distribution registries: references, auth, push, pull and copy.

This subpackage sits above the store: it may import ``layercore.store``, ``image``, ``imageref``
and ``errors``; nothing below it imports it (``Store.pull``/``push``/``copy`` are entry points
that import it when called).

- ``auth``: the Docker config file, credential helpers, ``WWW-Authenticate``;
- ``client``: one registry's API (requests, tokens, retries, blob upload and download);
- ``transfer``: pull, push and copy between the store and registries.
"""

from layercore.errors import (
    AuthenticationError,
    InvalidReferenceError,
    NetworkError,
    ReferenceNotFoundError,
    RegistryError,
)
from layercore.imageref import DEFAULT_REGISTRY, Reference
from layercore.registry.auth import Credentials, credentials_for, login, logout
from layercore.registry.client import RegistryClient, RetryPolicy
from layercore.registry.transfer import (
    BlobResult,
    BlobTransfer,
    PushResult,
    Transfers,
    copy,
    pull,
    push,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "AuthenticationError",
    "BlobResult",
    "BlobTransfer",
    "Credentials",
    "InvalidReferenceError",
    "NetworkError",
    "PushResult",
    "Reference",
    "ReferenceNotFoundError",
    "RegistryClient",
    "RegistryError",
    "RetryPolicy",
    "Transfers",
    "copy",
    "credentials_for",
    "login",
    "logout",
    "pull",
    "push",
]
