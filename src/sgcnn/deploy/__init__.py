"""The inference compiler: a self-grouped model in, exact and faster modules out.

- :mod:`sgcnn.deploy.convert`: the conversion driver behind :func:`sgcnn.convert`, with its
  passes in ``_convert_fusion`` (BatchNorm, residual, ReLU into each layer's epilogue),
  ``_convert_realize`` (candidate realizations and the choice per layer), ``_convert_pools``
  (native max pooling), ``_convert_memory`` (memory planning between native layers) and
  ``_convert_checks`` (device and input checks, the equivalence check, progress);
- :mod:`sgcnn.deploy.fast`: the fast modules, one per realization of a diverse group
  convolution (dense, gather + padded grouped, per-group loop, native kernel), defined in
  ``_fast_base`` (the layer spec and shared base), ``_fast_dense``, ``_fast_grouped``,
  ``_fast_native`` and ``_fast_pool`` (native max pooling);
- :mod:`sgcnn.deploy._native`: the native kernel (``csrc/dg_conv.c``) and its registered
  operators; :mod:`sgcnn.deploy._native_build` builds the C library on first use and loads it;
- :mod:`sgcnn.deploy._tuning`: timing of candidate realizations and the tuning cache;
- :mod:`sgcnn.deploy._arena`: the activation buffers a converted model reuses between calls
  (:func:`release_buffers` frees them).

- :mod:`sgcnn.deploy.export`: export to ONNX and ``.pt2`` (:func:`sgcnn.export`,
  :func:`sgcnn.load`), each program checked on a new input before it is written;
  ``_pt2_check`` reads a ``.pt2`` archive without unpickling anything, and ``_programs`` runs
  exported programs for ``sgcnn eval``.

Nothing is imported here: the submodules load when used.
"""


def release_buffers(model) -> int:
    """Free the activation buffers a converted ``model`` keeps between calls (they are made
    again by its next call); returns the bytes freed."""
    from sgcnn.deploy._arena import release

    return release(model)
