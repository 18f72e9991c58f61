"""Where this project keeps what it computes once per user: converted checkpoints, the
training sample cache, and (under JAX) compiled XLA programs."""

from __future__ import annotations

import os
from pathlib import Path

import keras

CACHE_ENV = "NAPARI_DEEPLAB_CACHE"
"""Overrides the user cache folder (:func:`cache_dir`)."""


def cache_dir() -> Path:
    """Where converted checkpoints are kept: ``$NAPARI_DEEPLAB_CACHE`` or the user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-deeplab"))


def use_jax_compilation_cache() -> None:
    """Under JAX, keep compiled XLA programs in ``<cache_dir>/jax`` unless JAX has a cache folder
    already (``JAX_COMPILATION_CACHE_DIR``). Every process compiles the weight initialisers
    of about 60 shapes when it first builds a model (10-15 s on 2 cores) and the model itself
    on first use; with the cache a new process (the CLI, napari's model process) reads them.
    Called before a model is built or loaded; does nothing on a second call."""
    if keras.backend.backend() != "jax":
        return
    import jax

    # JAX declares its flags at run time: typeshed-less mypy cannot see this one.
    if jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the initialisers are quick
