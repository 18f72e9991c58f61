"""Fixtures of the engine tests, which load TensorFlow in the test process; the ``keras`` marker.

Every test that runs a Keras model is marked ``keras`` at collection, without anyone writing
the mark, so that CI can run those again under another backend::

    KERAS_BACKEND=jax pytest tests/engine -m keras

A test runs a model when it (or a fixture it uses, or a helper of its module it calls) refers
to ``keras``, to a module of ours that runs models (:data:`MODEL_MODULES`), to the ``model``
or ``seed_checkpoint`` fixtures, or holds a script for a subprocess that imports one of them.
A test may also be marked by hand (``@pytest.mark.keras``); one marked ``backends`` compares
the backends itself and is left out, and so are those in :data:`ONE_BACKEND_IS_ENOUGH`.
"""

import inspect
import re
import types
from pathlib import Path

import pytest

MODEL_MODULES = ("keras", "napari_deeplab.model", "napari_deeplab.inference",
                 "napari_deeplab.training", "napari_deeplab.prelabel", "napari_deeplab.cli",
                 "napari_deeplab.worker", "napari_deeplab.ray_engine")
"""Modules whose use makes a test a Keras test (a module below one of them counts too)."""

MODEL_FIXTURES = {"model", "seed_checkpoint"}

ONE_BACKEND_IS_ENOUGH = {
    "test_ray_engine.py::test_a_worker_killed_mid_job_is_replaced_and_its_photos_redone",
    "test_ray_engine.py::test_an_interrupted_job_resumes_where_it_stopped",
    "test_ray_engine.py::test_a_job_that_cannot_progress_fails_with_a_clear_message",
    ("test_model_process.py::test_finetune_cancel_kills_training_at_once_and_a_new_run_trains_"
     "alongside_segment_jobs"),
    "test_model_process.py::test_a_killed_child_names_the_log_and_the_next_job_starts_a_fresh_one",
    "test_model_process.py::test_a_killed_training_process_names_the_log",
    "test_commit.py::test_predict_keeps_a_correction_committed_while_the_batch_runs",
    "test_pipeline.py::test_a_sample_committed_by_another_writer_while_the_pipeline_runs_is_kept",
    "test_cli.py::test_predict_writes_the_cihp_layout_and_reports_bad_files",
    "test_cli.py::test_existing_outputs_are_kept_unless_overwrite",
    "test_cli.py::test_validation_split_and_globs",
    "test_cli.py::test_missing_inputs_are_reported_and_the_rest_goes_on",
    "test_cli.py::test_console_script_offline_without_model_says_to_use_model_path",
    "test_cli.py::test_a_model_of_another_class_count_is_refused_with_one_line",
    "test_cli.py::test_convert_on_a_full_disk_is_one_line_and_sweeps_killed_temporaries",
    "test_cli.py::test_ctrl_c_while_the_command_starts_exits_130_with_one_line",
    "test_cli.py::test_finetune_on_a_full_disk_is_one_line",
    "test_commit.py::test_expected_version_refuses_a_sample_changed_by_another_process",
    "test_hostile_datasets.py::test_a_reader_without_write_permission_reads_the_last_complete_state",
    "test_hostile_datasets.py::test_an_id_differing_only_in_case_from_a_listed_one_is_refused",
    "test_hostile_datasets.py::test_an_id_list_saved_by_notepad_still_protects_its_samples",
    "test_model.py::test_an_unwritable_or_full_cache_is_one_line",
    "test_model.py::test_scratch_folders_of_killed_conversions_are_swept",
    "test_photos.py::test_a_tiff_bomb_that_pillow_cannot_open_is_refused_from_its_header",
    "test_photos.py::test_a_truncated_photo_and_a_fifo_are_named_for_what_they_are",
    "test_photos.py::test_an_unreadable_photo_is_called_unreadable_not_corrupt",
    "test_photos.py::test_every_kind_of_photo_decodes_to_the_same_rgb_in_predict_and_in_training",
    "test_photos.py::test_multi_page_photos_are_refused_with_one_line",
    "test_training.py::test_an_id_list_that_is_a_folder_or_unreadable_is_one_line",
    "test_training.py::test_an_id_listed_twice_is_scored_once_and_named",
    "test_training.py::test_masks_without_labelled_pixels_are_not_scored_zero",
    "test_training.py::test_overwrite_never_replaces_a_better_model_by_a_worse_one",
    "test_training.py::test_photos_that_cannot_be_decoded_are_named_in_evaluate_and_finetune",
}
"""Tests of what happens around a model (killed processes and actors, resumed jobs, another
writer, the command line's handling of inputs and outputs, photos decoded, hostile datasets, full
disks) that the JAX pass leaves out to stay
within its time: the model calls in them are the ones the other tests make (``predict``,
``evaluate`` and ``finetune`` on JAX: test_backends.py). A renamed test is simply run on both
backends."""

_SCRIPT_USES_A_MODEL = re.compile(
    r"\b(import keras|from keras|" + "|".join(re.escape(m) for m in MODEL_MODULES[1:]) + r")\b"
    r"(?![\w.])|\bKERAS_BACKEND\b|\bnapari-deeplab\b")


@pytest.fixture(scope="session")
def seed_checkpoint(tmp_path_factory) -> Path:
    """A Keras-2 SavedModel made exactly as the seed was (random weights, non-default BN stats)."""
    from tests.seed_reference import save_seed_checkpoint

    return save_seed_checkpoint(tmp_path_factory.mktemp("seed") / "deeplabv3p-resnet50")


@pytest.fixture(scope="session")
def model(seed_checkpoint):
    from napari_deeplab.model import load_model

    return load_model(seed_checkpoint)


@pytest.fixture(scope="session")
def model_file(model, tmp_path_factory) -> Path:
    """The ``model`` fixture as a ``.keras`` file (float32)."""
    from napari_deeplab.model import save_model

    path = tmp_path_factory.mktemp("model_file") / "seed.keras"
    save_model(model, path)
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "keras: runs a Keras model (selected automatically; "
                                       "CI runs these under KERAS_BACKEND=jax too)")
    config.addinivalue_line("markers", "backends: runs TensorFlow here and JAX in a subprocess "
                                       "(under the default backend only; never marked keras)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("keras") \
                or item.get_closest_marker("backends") \
                or f"{Path(str(item.fspath)).name}::{item.originalname}" in ONE_BACKEND_IS_ENOUGH:
            continue
        fixtures = item._fixtureinfo.name2fixturedefs
        functions = [item.obj] + [definition.func for name in item.fixturenames
                                  for definition in fixtures.get(name, ())]
        if MODEL_FIXTURES & set(item.fixturenames) or any(_uses_a_model(f, set()) for f in functions):
            item.add_marker(pytest.mark.keras)


def _is_model_module(name: str) -> bool:
    return any(name == module or name.startswith(module + ".") for module in MODEL_MODULES)


def _uses_a_model(function, seen: set) -> bool:
    """Whether ``function``'s code, or a function or script of the tests it refers to, uses a
    model module (see the module docstring)."""
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names, texts = set(), []
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        for constant in current.co_consts:
            if isinstance(constant, types.CodeType):
                stack.append(constant)
            elif isinstance(constant, str):
                texts.append(constant)
    if any(_is_model_module(name) for name in names):  # imported in the function
        return True
    scope = function.__globals__
    for name in names & scope.keys():
        value = scope[name]
        if isinstance(value, types.ModuleType):
            if _is_model_module(value.__name__):
                return True
        elif isinstance(value, str):
            texts.append(value)
        else:
            module = getattr(value, "__module__", None) or ""
            if _is_model_module(module) or module.startswith("tests.") and callable(value) \
                    and _uses_a_model(value, seen):
                return True
    return any(_SCRIPT_USES_A_MODEL.search(text) for text in texts)
