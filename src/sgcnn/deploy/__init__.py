"""The inference compiler: a self-grouped model in, exact and faster modules out.

- :mod:`sgcnn.deploy.convert`: fusion (BatchNorm, residual, ReLU into each layer's epilogue)
  and the conversion driver behind :func:`sgcnn.convert`;
- :mod:`sgcnn.deploy.fast`: the fast modules, one per realization of a diverse group
  convolution (dense, gather + padded grouped, per-group loop, native kernel);
- :mod:`sgcnn.deploy._native`: the native kernel (``csrc/dg_conv.c``, built on first use) and
  its registered operators;
- :mod:`sgcnn.deploy.tuning`: timing of candidate realizations and the tuning cache;
- :mod:`sgcnn.deploy._arena`: the activation buffers a converted model reuses between calls
  (:func:`release_buffers` frees them).

Export (ONNX, ``.pt2``) is :mod:`sgcnn.exporting`. Nothing is imported here: the submodules
load when used.
"""


def release_buffers(model) -> int:
    """Free the activation buffers a converted ``model`` keeps between calls (they are made
    again by its next call); returns the bytes freed."""
    from sgcnn.deploy._arena import release

    return release(model)
