"""Packaging conventions of napari's plugin template: a licence file, one version, no test code
in the installed package, every imported third-party package declared."""

import importlib.metadata
import re
from pathlib import Path

import pytest

import napari_deeplab

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = (REPO / "pyproject.toml").read_text()
METADATA = importlib.metadata.metadata("napari-deeplab")


@pytest.mark.keras
def test_the_license_is_mit_and_shipped():
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 napari-deeplab contributors" in license_text
    assert 'license-files = ["LICENSE"]' in PYPROJECT
    assert METADATA["License-Expression"] == "MIT"
    assert "LICENSE" in METADATA.get_all("License-File")


@pytest.mark.keras
def test_the_version_is_written_in_one_place():
    project_table = PYPROJECT.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project_table
    assert not re.search(r"^version\s*=", project_table, re.M)
    assert 'version = {attr = "napari_deeplab.__version__"}' in PYPROJECT
    assert importlib.metadata.version("napari-deeplab") == napari_deeplab.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", napari_deeplab.__version__)


def test_test_only_code_is_not_in_the_package():
    package = Path(napari_deeplab.__file__).parent
    assert not (package / "seed_reference.py").exists()
    assert not list(package.rglob("test_*.py"))
    assert (REPO / "tests" / "seed_reference.py").exists()


def test_imported_third_party_packages_are_declared():
    runtime = {
        re.split(r"[<>=~!\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in METADATA.get_all("Requires-Dist")
        if "extra ==" not in requirement
    }
    for needed in ("scipy", "filelock", "numpy", "scikit-image", "keras", "napari", "magicgui"):
        assert needed in runtime, needed
    package = Path(napari_deeplab.__file__).parent
    source = "\n".join(p.read_text() for p in package.rglob("*.py"))
    assert re.search(r"^\s*(from|import) scipy\b", source, re.M), "refine imports scipy"
    assert not re.search(r"^\s*(from|import) (pytest|tests)\b", source, re.M)
