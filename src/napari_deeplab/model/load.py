"""Loading models from a hub id, a seed-format SavedModel folder or a ``.keras`` file of ours,
and saving them."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from ..model_source import check_model_source
from .architecture import model_info
from .cache import use_jax_compilation_cache
from .errors import ModelError, first_line
from .precision import PRECISIONS, with_precision
from .seed_conversion import load_seed_checkpoint

HUB_REASON_CHARS = 120
"""Longest reason quoted from the hub client's error when a model cannot be downloaded."""


def load_model(
    source: str | os.PathLike | None = None,
    *,
    precision: str = "float32",
    num_classes: int | None = None,
) -> keras.Model:
    """Load a model from a hub id, a seed-format SavedModel folder or a ``.keras`` file of ours.

    A seed-format checkpoint is converted once into the native Keras 3 model and cached,
    keyed by its content, so later loads are fast and work offline (without TensorFlow too).

    Parameters
    ----------
    source : str or path-like, optional
        A hub id (``owner/name``), a folder or a ``.keras`` file; default
        :data:`~napari_deeplab.DEFAULT_MODEL`.
    precision : str
        ``"float32"`` or ``"bfloat16"`` (mixed precision, see
        :func:`~napari_deeplab.model.with_precision`), whatever the file holds.
    num_classes : int, optional
        Refuse a model with another number of classes (the commands that read or write
        CIHP datasets ask for :data:`~napari_deeplab.cihp.NUM_CLASSES`).

    Returns
    -------
    keras.Model
        ``(N, H, W, 3)`` RGB in 0..255 -> ``(N, H, W, C)`` float32 logits (see
        :func:`~napari_deeplab.model.build_model`).

    Raises
    ------
    ModelError
        With a one-line message, on any failure.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    use_jax_compilation_cache()
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
        raise ModelError(
            f"{source}: this model has {count} classes, not the {num_classes} CIHP "
            f"classes that napari-deeplab reads and writes; give a {num_classes}-class "
            "model (e.g. the default, or one fine-tuned from it)"
        )


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save ``model`` as a ``.keras`` file in float32, whatever it computes in, so that the
    file never forces bfloat16 on whoever loads it (Keras stores each layer's dtype policy)."""
    with_precision(model, "float32").save(path)


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id))
    except RepositoryNotFoundError:
        raise ModelError(
            f"{repo_id}: no such model on the Hugging Face hub; "
            "check the id or pass --model PATH to a local copy"
        ) from None
    except Exception as download_error:  # offline, proxy, timeouts: fall back to the cache
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
        except LocalEntryNotFoundError:
            if huggingface_hub.constants.HF_HUB_OFFLINE:
                reason = "offline: HF_HUB_OFFLINE is set"
            elif isinstance(download_error, LocalEntryNotFoundError):
                reason = "the hub cannot be reached"
            else:
                reason = first_line(download_error)[:HUB_REASON_CHARS]
            raise ModelError(
                f"cannot download {repo_id} from the Hugging Face hub ({reason}) and it is not "
                "cached; connect once, or pass --model PATH to a local copy "
                "(a SavedModel folder or a .keras file)"
            ) from None


def _load_folder(folder: Path, source: str) -> keras.Model:
    if (folder / "saved_model.pb").exists():
        return load_seed_checkpoint(folder, source)
    keras_files = sorted(folder.glob("*.keras"))
    if len(keras_files) == 1:
        return _load_keras_file(keras_files[0])
    raise ModelError(
        f"{folder}: not a model folder: expected a Keras-2 SavedModel "
        "(saved_model.pb, keras_metadata.pb, variables/) or one .keras file"
    )


def _load_keras_file(path: Path) -> keras.Model:
    if path.suffix != ".keras":
        raise ModelError(f"{path}: not a model file: expected a .keras file or a SavedModel folder")
    problem = _keras_archive_problem(path)
    if problem:
        raise ModelError(f"{path}: {problem}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for a bad zip, JSON or HDF5
        raise ModelError(
            f"{path}: cannot read this .keras file ({first_line(error)}); "
            "it may be truncated: save or copy it again"
        ) from None
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
        return (
            f"not a whole .keras file ({path.stat().st_size:,} bytes, no complete zip "
            "archive): it is truncated or damaged; save or copy it again"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return "a damaged .keras file (its zip archive cannot be read); save or copy it again"
    if "config.json" not in names:
        return "not a Keras model file (no config.json in the archive)"
    return ""
