"""The seed checkpoint: a Keras-2 TensorFlow SavedModel converted, weight by weight, into
:func:`~napari_deeplab.model.build_model`'s model, once, and cached.

Reading the SavedModel needs TensorFlow (not ``tf_keras``), under any Keras backend; a cached
conversion loads without it. A conversion is saved in a scratch folder named after its writer
(Keras may put a temporary of its own next to the file it saves) and then made visible in one
step by the one atomic writer (:func:`napari_deeplab.files.write_file_atomically`); the
scratch folders and temporaries of killed conversions are swept by
:func:`remove_stale_conversions`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import keras
from keras import layers

from .. import files
from .architecture import ASPP_BRANCHES, HIGH_LEVEL_FEATURES, LOW_LEVEL_FEATURES, build_model
from .cache import cache_dir
from .errors import ModelError, first_line

SEED_FILES = ("saved_model.pb", "keras_metadata.pb", "variables/variables.index")
"""The files a seed-format SavedModel folder holds (besides the other variables shards)."""

CONVERTED_FOLDER = "converted"
"""The folder of :func:`~napari_deeplab.model.cache_dir` holding converted checkpoints."""

DIGEST_CHUNK_BYTES = 1 << 22
"""Bytes read at a time when hashing a checkpoint's files."""

DIGEST_HEX_DIGITS = 32
"""Hex digits of the SHA-256 content digest that names a converted checkpoint."""

STALE_SCRATCH_S = 3600
"""Age after which a conversion's scratch folder of another host (or unattributable) is
deemed abandoned."""

_SCRATCH = re.compile(r"^tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def _checkpoint_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    paths = [folder / "saved_model.pb", folder / "keras_metadata.pb"]
    paths += sorted((folder / "variables").glob("variables.*"))
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(DIGEST_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:DIGEST_HEX_DIGITS]


def load_seed_checkpoint(folder: str | os.PathLike, source: str | None = None) -> keras.Model:
    """Load a Keras-2 SavedModel in the seed's format, converting it once and caching the result.

    The cache entry is ``<cache_dir>/converted/<content digest>.keras``; a cached model loads
    without TensorFlow. ``source``: how the user named the model (a hub id), for messages.
    Raises :class:`~napari_deeplab.model.ModelError` (one line) for a folder that is not a
    seed checkpoint and for a cache folder that cannot be written (checked before converting).
    """
    folder = Path(folder)
    missing = [name for name in SEED_FILES if not (folder / name).exists()]
    if missing:
        raise ModelError(
            f"{folder}: not a seed-format SavedModel (missing {', '.join(missing)}); "
            "give the folder holding saved_model.pb, keras_metadata.pb and variables/"
        )
    cached = cache_dir() / CONVERTED_FOLDER / f"{_checkpoint_digest(folder)}.keras"
    if cached.exists():
        try:
            return keras.saving.load_model(cached, compile=False)
        except Exception:
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    try:  # before converting: an unwritable cache is reported at once
        cached.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_conversions(cached.parent)
        scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(), dir=cached.parent))
    except OSError as error:
        raise ModelError(_cache_problem(cached.parent, error)) from None
    try:
        model = convert_seed_checkpoint(folder, source)
        files.write_file_atomically(cached, lambda temporary: _save_via(scratch, model, temporary))
    except OSError as error:  # a full disk while saving
        raise ModelError(_cache_problem(cached.parent, error)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model


def _save_via(scratch: Path, model: keras.Model, temporary: Path) -> None:
    """Save ``model`` in ``scratch`` (which catches Keras's own temporary file) and move the
    file to ``temporary``, the atomic writer's, on the same filesystem."""
    saved = scratch / f"model{temporary.suffix}"
    model.save(saved)
    os.replace(saved, temporary)


def _cache_problem(folder: Path, error: OSError) -> str:
    return (
        f"cannot write the converted model into the cache folder {folder} "
        f"({error.strerror or error}); free some space there, or set NAPARI_DEEPLAB_CACHE "
        "to a writable folder"
    )


def scratch_prefix() -> str:
    """Names a conversion's scratch folder after its writer: ``tmp-<host tag>-<pid>-``
    (:data:`napari_deeplab.files.HOST_TAG`)."""
    return f"tmp-{files.HOST_TAG}-{os.getpid()}-"


def remove_stale_conversions(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed conversions left in ``folder``: the scratch folders (``tmp*``) of a
    writer of this host that is gone, or older than :data:`STALE_SCRATCH_S` (another host,
    or folders made before they were named after their writer), and the atomic writer's
    temporaries of dead writers (:func:`napari_deeplab.files.remove_stale_temporaries`).
    Returns what was removed."""
    folder, now, removed = Path(folder), time.time(), list[Path]()
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
        mine = match is not None and match["host"] == files.HOST_TAG
        stale = not files.process_alive(int(match["pid"])) if match and mine else old
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed + files.remove_stale_temporaries(folder)


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
        raise ModelError(
            f"{folder}: the variables files are unreadable ({first_line(error)}); "
            "the download may be truncated: delete the folder and download it again"
        ) from None
    roles = _seed_layer_roles(seed_layers)
    if "logits" not in roles:
        raise ModelError(
            f"{folder}: not the seed architecture (no output layer found); "
            "give a DeepLabV3+ ResNet50 checkpoint"
        )
    num_classes = weights_by_layer[roles["logits"]]["kernel"].shape[-1]
    model = build_model(num_classes)
    for layer in model.layers:
        if not layer.weights:
            continue
        seed_name = roles.get(layer.name, layer.name)
        seed_weights = weights_by_layer.get(seed_name)
        if seed_weights is None:
            raise ModelError(
                f"{folder}: not the seed architecture (no weights for layer "
                f"{layer.name}); give a DeepLabV3+ ResNet50 checkpoint"
            )
        names = (
            ["gamma", "beta", "moving_mean", "moving_variance"]
            if isinstance(layer, layers.BatchNormalization)
            else ["kernel", "bias"][: len(layer.weights)]
        )
        values = [seed_weights[name] for name in names]
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise ModelError(
                f"{folder}: not the seed architecture (layer {seed_name} has "
                "weights of other shapes); give a DeepLabV3+ ResNet50 checkpoint"
            )
        layer.set_weights(values)
    return model


def _tensorflow_for_conversion(source: str):
    """The ``tensorflow`` module, or :class:`ModelError` saying that converting ``source`` needs it."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError(
            f"{source}: converting the seed SavedModel needs TensorFlow: pip install "
            f"tensorflow, or convert once with `napari-deeplab convert {source} --out "
            "model.keras` where TensorFlow is installed and use the .keras file"
        ) from None
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
        raise ModelError(
            f"{folder}: keras_metadata.pb is unreadable ({first_line(error)}); "
            "the download may be truncated: download the model again"
        ) from None


def _seed_weights_by_layer(reader, seed_layers: list[dict]) -> dict[str, dict]:
    """Map each seed layer name to its weights, following the checkpoint's object graph.

    Keras 2 tracks a functional model's layers as ``layer-<i>`` (config order) and those
    with weights again as ``layer_with_weights-<j>``; both point at the same graph node.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    root_children = {child.local_name: child.node_id for child in graph.nodes[0].children}
    layer_index_by_node = {
        node: int(name.split("-")[1])
        for name, node in root_children.items()
        if name.startswith("layer-")
    }
    weights = {}
    for name, node in root_children.items():
        if not name.startswith("layer_with_weights-"):
            continue
        layer_name = seed_layers[layer_index_by_node[node]]["name"]
        weights[layer_name] = {
            attribute: reader.get_tensor(key) for attribute, key in _variables_of(graph, node)
        }
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

    role_of: dict[str, str] = {}
    for layer in seed_layers:  # config order is topological
        name = layer["name"]
        if layer["class_name"] != "Conv2D" or _TRUNK_LAYER.match(name):
            continue
        feed = feeding_layer(name)
        feed_class = by_name[feed]["class_name"]
        if feed == HIGH_LEVEL_FEATURES:
            dilation = _first(layer["config"]["dilation_rate"])
            role = (
                "aspp_1x1"
                if _first(layer["config"]["kernel_size"]) == 1
                else f"aspp_rate{dilation}"
            )
        elif feed == LOW_LEVEL_FEATURES:
            role = "low_level"
        elif feed_class == "AveragePooling2D":
            role = "aspp_pool"
        elif feed_class == "Concatenate":
            role = "aspp_project" if len(inputs(feed)) == ASPP_BRANCHES else "decoder_block1"
        elif role_of.get(feed) == "decoder_block1":
            role = "decoder_block2"
        elif role_of.get(feed) == "decoder_block2":
            role = "logits"
        else:
            raise ModelError(
                f"the checkpoint is not the seed architecture (layer {name} has no "
                "place in DeepLabV3+); give a DeepLabV3+ ResNet50 checkpoint"
            )
        role_of[name] = role
    roles = {
        ("logits" if role == "logits" else f"{role}_conv"): name for name, role in role_of.items()
    }
    for layer in seed_layers:
        if layer["class_name"] == "BatchNormalization" and inputs(layer["name"])[0] in role_of:
            roles[f"{role_of[inputs(layer['name'])[0]]}_bn"] = layer["name"]
    return roles


def _first(value):
    if isinstance(value, dict):  # Keras 2 serialises tuples as {"class_name": "__tuple__", ...}
        value = value["items"]
    return value[0] if isinstance(value, (list, tuple)) else value
