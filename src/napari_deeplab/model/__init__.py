"""DeepLabV3+ (ResNet50) in Keras 3, and loading of checkpoints: the hub, seed SavedModels, ``.keras``.

- :mod:`.architecture`: :func:`build_model` and the layers of ours it is made of; the same
  weights run at any input size whose sides are multiples of 16. Our models take RGB in
  0..255 and return one logit per class and pixel; they carry their class names and training
  input size (:func:`model_info`).
- :mod:`.folding`: :func:`fold_batch_norm`, the inference-only copy.
- :mod:`.precision`: float32 or bfloat16 mixed precision (:data:`PRECISIONS`).
- :mod:`.load`: :func:`load_model` from a hub id, a folder or a ``.keras`` file, :func:`save_model`.
- :mod:`.seed_conversion`: the seed's Keras-2 SavedModel converted once and cached.
- :mod:`.cache`: where converted checkpoints (and, under JAX, compiled programs) are kept.

Any Keras backend runs the models (``KERAS_BACKEND``: TensorFlow by default, JAX, PyTorch);
only converting the seed's SavedModel needs TensorFlow.
"""

from .architecture import (
    SEED_INPUT_SIZE,
    BilinearUpsampling,
    BroadcastToSpatial,
    ModelInfo,
    build_model,
    model_info,
)
from .cache import cache_dir, use_jax_compilation_cache
from .errors import ModelError
from .folding import fold_batch_norm
from .load import load_model, require_classes, save_model
from .precision import PRECISIONS, model_precision, with_precision
from .seed_conversion import (
    STALE_SCRATCH_S,
    convert_seed_checkpoint,
    load_seed_checkpoint,
    remove_stale_conversions,
    scratch_prefix,
)

__all__ = [
    "PRECISIONS",
    "SEED_INPUT_SIZE",
    "STALE_SCRATCH_S",
    "BilinearUpsampling",
    "BroadcastToSpatial",
    "ModelError",
    "ModelInfo",
    "build_model",
    "cache_dir",
    "convert_seed_checkpoint",
    "fold_batch_norm",
    "load_model",
    "load_seed_checkpoint",
    "model_info",
    "model_precision",
    "remove_stale_conversions",
    "require_classes",
    "save_model",
    "scratch_prefix",
    "use_jax_compilation_cache",
    "with_precision",
]
