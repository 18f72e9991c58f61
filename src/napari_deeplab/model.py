"""DeepLabV3+ (ResNet50) in Keras 3, and loading of checkpoints: the hub, seed SavedModels, ``.keras``.

The architecture is the seed's (the Keras example "Multiclass semantic segmentation using
DeepLabV3+"), written so that pooling and upsampling follow the input: the same weights run
at any input size whose sides are multiples of 16. Our models take RGB in 0..255 (the
scaling to [-1, 1] the seed was trained with is the model's first layer) and return one
logit per class and pixel; they carry their class names and training input size.

Any Keras backend runs them (``KERAS_BACKEND``: TensorFlow by default, JAX, PyTorch); only
converting the seed's SavedModel needs TensorFlow. :func:`load_model` gives them in float32
or in bfloat16 mixed precision (:data:`PRECISIONS`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from .cihp import CLASS_NAMES
from .files import process_alive
from .model_source import check_model_source

SEED_INPUT_SIZE = 512
"""Side of the square the seed was trained on; inputs are resized to it without keeping aspect."""

_SEED_FILES = ("saved_model.pb", "keras_metadata.pb", "variables/variables.index")

PRECISIONS = ("float32", "bfloat16")
"""What :func:`load_model` and :func:`with_precision` take. ``bfloat16`` is Keras's
``mixed_bfloat16``: variables stay float32, layers compute in bfloat16, and the logits are
cast to float32 before the last upsampling, so the loss, the argmax and the softmax work
in float32."""

_FLOAT32_OUTPUT_LAYERS = ("output_upsample", "model_info")
"""Layers that keep float32 in a bfloat16 model (the logits' upsampling and the output)."""


class ModelError(Exception):
    """A model could not be found, downloaded or read; the message says what to do."""


@keras.saving.register_keras_serializable(package="napari_deeplab")
class BroadcastToSpatial(layers.Layer):
    """Repeat a 1 x 1 feature over the spatial size of a reference feature map.

    The seed upsampled its image-pooling branch bilinearly from 1 x 1, which is this
    broadcast; doing it from the reference's shape keeps the model size-agnostic.
    """

    def call(self, inputs):
        pooled, reference = inputs
        return pooled * ops.ones_like(reference[..., :1])

    def compute_output_shape(self, input_shapes):
        pooled, reference = input_shapes
        return reference[:-1] + pooled[-1:]


@keras.saving.register_keras_serializable(package="napari_deeplab")
class BilinearUpsampling(layers.Layer):
    """Bilinear upsampling by an integer factor that, unlike ``UpSampling2D``, also runs on
    inputs whose spatial size is only known at run time (a retraced ``tf.function``)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            # keras.ops.image.resize validates the size in Python, which a symbolic size fails
            import tensorflow as tf

            resized = tf.image.resize(inputs, tf.shape(inputs)[1:3] * self.factor, method="bilinear")
            return ops.cast(resized, inputs.dtype)  # tf.image.resize returns float32
        shape = ops.shape(inputs)  # static under JAX and PyTorch
        return ops.image.resize(inputs, (shape[1] * self.factor, shape[2] * self.factor),
                                interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scaled = [None if side is None else side * self.factor for side in (height, width)]
        return (batch, *scaled, channels)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="napari_deeplab")
class ModelInfo(layers.Layer):
    """Identity on the logits that carries the class names and the input size into ``.keras`` files."""

    def __init__(self, class_names=CLASS_NAMES, input_size=SEED_INPUT_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        self.input_size = int(input_size)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names),
                "input_size": self.input_size}


def _conv_block(x, filters, kernel_size, name, dilation_rate=1, use_bias=False):
    x = layers.Conv2D(filters, kernel_size, dilation_rate=dilation_rate, padding="same",
                      use_bias=use_bias, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_model(num_classes: int = len(CLASS_NAMES), class_names=None,
                input_size: int = SEED_INPUT_SIZE) -> keras.Model:
    """Build DeepLabV3+ with a ResNet50 trunk and random weights.

    The model maps ``(N, H, W, 3)`` float RGB in 0..255 to ``(N, H, W, num_classes)``
    float32 logits, for any H and W that are multiples of 16. With 20 classes it has
    11,857,236 parameters, as the seed. ``input_size`` is the square side that
    :func:`napari_deeplab.inference.segment` resizes photos to.
    """
    if class_names is None:
        class_names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [
            f"class {i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    rgb = keras.Input(shape=(None, None, 3), name="rgb")
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")(rgb)
    trunk = keras.applications.ResNet50(weights=None, include_top=False, input_tensor=scaled)
    high = trunk.get_layer("conv4_block6_2_relu").output  # output stride 16
    low = trunk.get_layer("conv2_block3_2_relu").output  # output stride 4

    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(high)
    pooled = _conv_block(pooled, 256, 1, "aspp_pool", use_bias=True)
    pooled = BroadcastToSpatial(name="aspp_pool_broadcast")([pooled, high])
    branches = [pooled, _conv_block(high, 256, 1, "aspp_1x1")]
    branches += [_conv_block(high, 256, 3, f"aspp_rate{rate}", dilation_rate=rate)
                 for rate in (6, 12, 18)]
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_block(x, 256, 1, "aspp_project")

    x = BilinearUpsampling(4, name="decoder_upsample")(x)
    low = _conv_block(low, 48, 1, "low_level")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_block(x, 256, 3, "decoder_block1")
    x = _conv_block(x, 256, 3, "decoder_block2")
    # The seed upsampled the 256 features x4 and then applied the 1x1 logits conv; both are
    # linear, so conv-then-upsample is the same function with 13x less work at full size.
    logits = layers.Conv2D(num_classes, 1, padding="same", name="logits")(x)
    logits = BilinearUpsampling(4, name="output_upsample")(logits)
    logits = ModelInfo(class_names, input_size, name="model_info")(logits)
    return keras.Model(rgb, logits, name="deeplabv3plus_resnet50")


def model_info(model: keras.Model) -> ModelInfo:
    """The :class:`ModelInfo` layer of one of our models (class names, input size)."""
    try:
        return model.get_layer("model_info")
    except ValueError:
        raise ModelError(f"model {model.name!r} was not made by napari-deeplab "
                         "(it has no class names); load it with napari_deeplab.model.load_model") from None


class _Identity(layers.Layer):
    """Stands in for a batch-norm layer folded into its convolution (accepts BN's call arguments)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """Return an inference-only copy of ``model`` with each batch norm folded into the conv before it.

    Computes the same function (to float rounding) about 10% faster; not for training.
    """
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(tensor._keras_history[0].name, []).append(layer)
    folded_into = {}  # batch-norm layer name -> conv layer
    for layer in model.layers:
        following = consumers.get(layer.name, [])
        if isinstance(layer, layers.Conv2D) and len(following) == 1 \
                and isinstance(following[0], layers.BatchNormalization):
            folded_into[following[0].name] = layer

    folded_convs = {conv.name for conv in folded_into.values()}

    def clone(layer):
        if layer.name in folded_into:
            return _Identity(name=layer.name, dtype=layer.dtype_policy)
        config = layer.get_config()
        if layer.name in folded_convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    inference = keras.models.clone_model(model, clone_function=clone)
    for bn_name, conv in folded_into.items():
        bn = model.get_layer(bn_name)
        kernel, *bias = conv.get_weights()
        bias = bias[0] if bias else np.zeros(kernel.shape[-1], kernel.dtype)
        gamma, beta, mean, variance = bn.get_weights()
        scale = gamma / np.sqrt(variance + bn.epsilon)
        inference.get_layer(conv.name).set_weights([kernel * scale, beta + (bias - mean) * scale])
    for layer in model.layers:
        if layer.weights and layer.name not in folded_convs and layer.name not in folded_into:
            inference.get_layer(layer.name).set_weights(layer.get_weights())
    return inference


# --- precision ---------------------------------------------------------------------------------

def model_precision(model: keras.Model) -> str:
    """``"bfloat16"`` if ``model``'s convolutions compute in bfloat16, else ``"float32"``."""
    return "bfloat16" if model.get_layer("logits").compute_dtype == "bfloat16" else "float32"


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` itself if it already computes in ``precision`` (one of :data:`PRECISIONS`),
    else a copy of it that does, with the same weights (float32 variables in both).

    A bfloat16 copy has the ``mixed_bfloat16`` dtype policy on every layer except the
    logits' upsampling and the output (float32), so it still returns float32 logits.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if model_precision(model) == precision:
        return model
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in _FLOAT32_OUTPUT_LAYERS else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save ``model`` as a ``.keras`` file in float32, whatever it computes in, so that the
    file never forces bfloat16 on whoever loads it (Keras stores each layer's dtype policy)."""
    with_precision(model, "float32").save(path)


# --- loading ---------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where converted checkpoints are kept: ``$NAPARI_DEEPLAB_CACHE`` or the user cache folder."""
    override = os.environ.get("NAPARI_DEEPLAB_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-deeplab"))


def use_jax_compilation_cache() -> None:
    """Under JAX, keep compiled XLA programs in ``<cache_dir>/jax`` unless JAX has a cache folder
    already (``JAX_COMPILATION_CACHE_DIR``). Every process compiles the weight initialisers
    of about 60 shapes when it first builds a model (10-15 s on 2 cores) and the model itself
    on first use; with the cache a new process (the CLI, napari's model process) reads them."""
    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the initialisers are quick


use_jax_compilation_cache()


def load_model(source: str | os.PathLike | None = None, *, precision: str = "float32",
               num_classes: int | None = None) -> keras.Model:
    """Load a model from a hub id, a seed-format SavedModel folder or a ``.keras`` file of ours.

    ``source`` defaults to :data:`DEFAULT_MODEL`. A seed-format checkpoint is converted once
    into the native Keras 3 model and cached, keyed by its content, so later loads are fast
    and work offline (without TensorFlow too). ``precision``: ``"float32"`` or
    ``"bfloat16"`` (mixed precision, see :func:`with_precision`), whatever the file holds.
    ``num_classes``: refuse a model with another number of classes (the commands that read or
    write CIHP datasets ask for :data:`~napari_deeplab.cihp.NUM_CLASSES`).
    Raises :class:`ModelError` with a one-line message on any failure.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    try:
        source = check_model_source(source)
    except ValueError as error:
        raise ModelError(str(error)) from None
    path = Path(source).expanduser()
    if path.is_dir():
        model = _load_folder(path, source)
    elif path.is_file():
        model = _load_keras_file(path)
    else:  # check_model_source let only a hub id through
        model = _load_folder(_download(source), source)
    if num_classes is not None:
        require_classes(model, num_classes, source)
    return with_precision(model, precision)


def require_classes(model: keras.Model, num_classes: int, source) -> None:
    """Raise :class:`ModelError` naming ``source`` and the model's class count unless it has
    ``num_classes`` classes (a 5-class model would write its ids as CIHP classes)."""
    count = len(model_info(model).class_names)
    if count != num_classes:
        raise ModelError(f"{source}: this model has {count} classes, not the {num_classes} CIHP "
                         f"classes that napari-deeplab reads and writes; give a {num_classes}-class "
                         "model (e.g. the default, or one fine-tuned from it)")


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id))
    except RepositoryNotFoundError:
        raise ModelError(f"{repo_id}: no such model on the Hugging Face hub; "
                         "check the id or pass --model PATH to a local copy") from None
    except Exception as download_error:  # offline, proxy, timeouts: fall back to the cache
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
        except LocalEntryNotFoundError:
            if huggingface_hub.constants.HF_HUB_OFFLINE:
                reason = "offline: HF_HUB_OFFLINE is set"
            elif isinstance(download_error, LocalEntryNotFoundError):
                reason = "the hub cannot be reached"
            else:
                reason = _first_line(download_error)[:120]
            raise ModelError(
                f"cannot download {repo_id} from the Hugging Face hub ({reason}) and it is not "
                "cached; connect once, or pass --model PATH to a local copy "
                "(a SavedModel folder or a .keras file)") from None


def _load_folder(folder: Path, source: str) -> keras.Model:
    if (folder / "saved_model.pb").exists():
        return load_seed_checkpoint(folder, source)
    keras_files = sorted(folder.glob("*.keras"))
    if len(keras_files) == 1:
        return _load_keras_file(keras_files[0])
    raise ModelError(f"{folder}: not a model folder: expected a Keras-2 SavedModel "
                     "(saved_model.pb, keras_metadata.pb, variables/) or one .keras file")


def _load_keras_file(path: Path) -> keras.Model:
    if path.suffix != ".keras":
        raise ModelError(f"{path}: not a model file: expected a .keras file or a SavedModel folder")
    problem = _keras_archive_problem(path)
    if problem:
        raise ModelError(f"{path}: {problem}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for a bad zip, JSON or HDF5
        raise ModelError(f"{path}: cannot read this .keras file ({_first_line(error)}); "
                         "it may be truncated: save or copy it again") from None
    model_info(model)
    return model


def _keras_archive_problem(path: Path) -> str:
    """Why ``path`` is not a whole ``.keras`` archive (a zip of its files), or "" when it is.
    Keras itself says "File not found" for a truncated file, which sends users the wrong way."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "permission denied: this user cannot read the model file"
    except OSError as error:
        return f"cannot open the model file ({error.strerror})"
    if not zipfile.is_zipfile(path):
        return (f"not a whole .keras file ({path.stat().st_size:,} bytes, no complete zip "
                "archive): it is truncated or damaged; save or copy it again")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return "a damaged .keras file (its zip archive cannot be read); save or copy it again"
    if "config.json" not in names:
        return "not a Keras model file (no config.json in the archive)"
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _checkpoint_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    files = [folder / "saved_model.pb", folder / "keras_metadata.pb"]
    files += sorted((folder / "variables").glob("variables.*"))
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def load_seed_checkpoint(folder: str | os.PathLike, source: str | None = None) -> keras.Model:
    """Load a Keras-2 SavedModel in the seed's format, converting it once and caching the result.

    The cache entry is ``<cache_dir>/converted/<content digest>.keras``; a cached model loads
    without TensorFlow. ``source``: how the user named the model (a hub id), for messages.
    """
    folder = Path(folder)
    missing = [name for name in _SEED_FILES if not (folder / name).exists()]
    if missing:
        raise ModelError(f"{folder}: not a seed-format SavedModel (missing {', '.join(missing)}); "
                         "give the folder holding saved_model.pb, keras_metadata.pb and variables/")
    cached = cache_dir() / "converted" / f"{_checkpoint_digest(folder)}.keras"
    if cached.exists():
        try:
            return keras.saving.load_model(cached, compile=False)
        except Exception:
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    try:  # before converting: an unwritable cache is reported at once
        cached.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_conversions(cached.parent)
        scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(), dir=cached.parent))
    except OSError as error:
        raise ModelError(_cache_problem(cached.parent, error)) from None
    try:
        model = convert_seed_checkpoint(folder, source)
        partial = scratch / cached.name
        model.save(partial)
        os.replace(partial, cached)
    except OSError as error:  # a full disk while saving
        raise ModelError(_cache_problem(cached.parent, error)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model


def _cache_problem(folder: Path, error: OSError) -> str:
    return (f"cannot write the converted model into the cache folder {folder} "
            f"({error.strerror or error}); free some space there, or set NAPARI_DEEPLAB_CACHE "
            "to a writable folder")


STALE_SCRATCH_S = 3600
"""Age after which a conversion's scratch folder of another host (or unattributable) is
deemed abandoned."""

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_SCRATCH = re.compile(r"^tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def _scratch_prefix() -> str:
    """Names a conversion's scratch folder after its writer: ``tmp-<host>-<pid>-``."""
    return f"tmp-{_HOST}-{os.getpid()}-"


def remove_stale_conversions(folder: str | os.PathLike) -> list[Path]:
    """Remove the scratch folders (``tmp*``) of conversions that were killed: a writer of this
    host that is gone, or older than :data:`STALE_SCRATCH_S` (another host, or folders made
    before they were named after their writer). Returns what was removed."""
    folder, now, removed = Path(folder), time.time(), []
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        if not entry.name.startswith("tmp") or not entry.is_dir(follow_symlinks=False):
            continue
        match = _SCRATCH.match(entry.name)
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SCRATCH_S
        except FileNotFoundError:
            continue
        mine = match is not None and match["host"] == _HOST
        stale = old if not mine else not process_alive(int(match["pid"]))
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def convert_seed_checkpoint(folder: str | os.PathLike, source: str | None = None) -> keras.Model:
    """Convert a seed-format SavedModel into :func:`build_model`'s model, weight by weight.

    Reads the layer graph from ``keras_metadata.pb`` and the weights from the variables
    checkpoint; needs TensorFlow (not ``tf_keras``), under any Keras backend: without it,
    :class:`ModelError` says how to convert elsewhere. No caching: see
    :func:`load_seed_checkpoint`. ``source``: how the user named the model, for messages.
    """
    folder = Path(folder)
    tf = _tensorflow_for_conversion(source or str(folder))
    seed_layers = _read_seed_layer_config(folder)
    try:
        reader = tf.train.load_checkpoint(str(folder / "variables" / "variables"))
        weights_by_layer = _seed_weights_by_layer(reader, seed_layers)
    except (tf.errors.OpError, ValueError, IndexError) as error:  # IndexError: short read
        raise ModelError(f"{folder}: the variables files are unreadable ({_first_line(error)}); "
                         "the download may be truncated: delete the folder and download it again") \
            from None
    roles = _seed_layer_roles(seed_layers)
    if "logits" not in roles:
        raise ModelError(f"{folder}: not the seed architecture (no output layer found); "
                         "give a DeepLabV3+ ResNet50 checkpoint")
    num_classes = weights_by_layer[roles["logits"]]["kernel"].shape[-1]
    model = build_model(num_classes)
    for layer in model.layers:
        if not layer.weights:
            continue
        seed_name = roles.get(layer.name, layer.name)
        seed_weights = weights_by_layer.get(seed_name)
        if seed_weights is None:
            raise ModelError(f"{folder}: not the seed architecture (no weights for layer "
                             f"{layer.name}); give a DeepLabV3+ ResNet50 checkpoint")
        names = ["gamma", "beta", "moving_mean", "moving_variance"] \
            if isinstance(layer, layers.BatchNormalization) else ["kernel", "bias"][:len(layer.weights)]
        values = [seed_weights[name] for name in names]
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise ModelError(f"{folder}: not the seed architecture (layer {seed_name} has "
                             "weights of other shapes); give a DeepLabV3+ ResNet50 checkpoint")
        layer.set_weights(values)
    return model


def _tensorflow_for_conversion(source: str):
    """The ``tensorflow`` module, or :class:`ModelError` saying that converting ``source`` needs it."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError(f"{source}: converting the seed SavedModel needs TensorFlow: pip install "
                         f"tensorflow, or convert once with `napari-deeplab convert {source} --out "
                         "model.keras` where TensorFlow is installed and use the .keras file") \
            from None
    return tf


def _read_seed_layer_config(folder: Path) -> list[dict]:
    try:
        from tensorflow.python.keras.protobuf import saved_metadata_pb2
    except ImportError:  # pragma: no cover - moved in some TensorFlow releases
        from tf_keras.protobuf import saved_metadata_pb2
    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString((folder / "keras_metadata.pb").read_bytes())
        root = next(node for node in metadata.nodes if node.node_path == "root")
        return json.loads(root.metadata)["config"]["layers"]
    except Exception as error:
        raise ModelError(f"{folder}: keras_metadata.pb is unreadable ({_first_line(error)}); "
                         "the download may be truncated: download the model again") from None


def _seed_weights_by_layer(reader, seed_layers: list[dict]) -> dict[str, dict]:
    """Map each seed layer name to its weights, following the checkpoint's object graph.

    Keras 2 tracks a functional model's layers as ``layer-<i>`` (config order) and those
    with weights again as ``layer_with_weights-<j>``; both point at the same graph node.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    root_children = {child.local_name: child.node_id for child in graph.nodes[0].children}
    layer_index_by_node = {node: int(name.split("-")[1]) for name, node in root_children.items()
                           if name.startswith("layer-")}
    weights = {}
    for name, node in root_children.items():
        if not name.startswith("layer_with_weights-"):
            continue
        layer_name = seed_layers[layer_index_by_node[node]]["name"]
        weights[layer_name] = {attribute: reader.get_tensor(key)
                               for attribute, key in _variables_of(graph, node)}
    return weights


def _variables_of(graph, node_id):
    """(attribute name, checkpoint key) of each variable of a layer node, e.g. ("kernel", ...)."""
    for child in graph.nodes[node_id].children:
        for attribute in graph.nodes[child.node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                yield child.local_name, attribute.checkpoint_key


_TRUNK_LAYER = re.compile(r"^(conv\d|pool\d)_")
_PASS_THROUGH = ("TFOpLambda", "Activation", "BatchNormalization", "UpSampling2D")


def _seed_layer_roles(seed_layers: list[dict]) -> dict[str, str]:
    """Name the seed's head layers (Keras auto-names such as ``conv2d_3``) by their place in the graph.

    Returns ``{our layer name: seed layer name}`` for the head's Conv2D and BatchNormalization
    layers; the ResNet50 trunk layers have the same names in both models.
    """
    by_name = {layer["name"]: layer for layer in seed_layers}

    def inputs(name):
        node = by_name[name]["inbound_nodes"][0]
        if isinstance(node[0], str):  # TFOpLambda layers store one flat node
            return [node[0]]
        return [entry[0] for entry in node]

    def feeding_layer(name):
        name = inputs(name)[0]
        while not _TRUNK_LAYER.match(name) and by_name[name]["class_name"] in _PASS_THROUGH:
            name = inputs(name)[0]
        return name

    role_of = {}
    for layer in seed_layers:  # config order is topological
        name = layer["name"]
        if layer["class_name"] != "Conv2D" or _TRUNK_LAYER.match(name):
            continue
        feed = feeding_layer(name)
        feed_class = by_name[feed]["class_name"]
        if feed == "conv4_block6_2_relu":
            dilation = _first(layer["config"]["dilation_rate"])
            role = "aspp_1x1" if _first(layer["config"]["kernel_size"]) == 1 else f"aspp_rate{dilation}"
        elif feed == "conv2_block3_2_relu":
            role = "low_level"
        elif feed_class == "AveragePooling2D":
            role = "aspp_pool"
        elif feed_class == "Concatenate":
            role = "aspp_project" if len(inputs(feed)) == 5 else "decoder_block1"
        elif role_of.get(feed) == "decoder_block1":
            role = "decoder_block2"
        elif role_of.get(feed) == "decoder_block2":
            role = "logits"
        else:
            raise ModelError(f"the checkpoint is not the seed architecture (layer {name} has no "
                             "place in DeepLabV3+); give a DeepLabV3+ ResNet50 checkpoint")
        role_of[name] = role
    roles = {("logits" if role == "logits" else f"{role}_conv"): name for name, role in role_of.items()}
    for layer in seed_layers:
        if layer["class_name"] == "BatchNormalization" and inputs(layer["name"])[0] in role_of:
            roles[f"{role_of[inputs(layer['name'])[0]]}_bn"] = layer["name"]
    return roles


def _first(value):
    if isinstance(value, dict):  # Keras 2 serialises tuples as {"class_name": "__tuple__", ...}
        value = value["items"]
    return value[0] if isinstance(value, (list, tuple)) else value
