"""Running containers from images: the sandbox, and containers kept in the store.

- :mod:`layercore.runtime.sandbox`: the overlay, bwrap and ``unshare`` command lines a command
  runs in (the builder's ``RUN`` uses it too);
- :mod:`layercore.runtime.containers`: ``Store.run`` and the containers it keeps (their writable
  layer, status and exit code), ``start``, ``diff``, ``commit`` and ``rm``.

It may import the lower layers (layer, stack, image, store, errors) and nothing above them.
"""
