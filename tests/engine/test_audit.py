"""The label-noise audit finds noise injected into real CIHP masks, named by kind, when a
confident model (here: one whose output is the clean mask) disagrees with them."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_deeplab import audit
from napari_deeplab.cihp import LEFT_RIGHT_SWAP

MASKS = Path(__file__).parents[1] / "data" / "cihp_samples" / "Category_ids"


def _mask(sample_id):
    return np.array(Image.open(MASKS / f"{sample_id}.png"))


def _oracle(clean, classes=20):
    """A confident model whose argmax is the clean mask, less sure at the parts' edges (a pixel
    with another class in its 3 x 3 neighbourhood): H x W x C probabilities."""
    edge = ndi.maximum_filter(clean, size=3) != ndi.minimum_filter(clean, size=3)
    unsure = np.where(edge, 0.5, 0.05)[..., None]
    one_hot = np.eye(classes, dtype=np.float32)[clean]
    return (1 - unsure) * one_hot + unsure / classes


def _largest(mask, class_id):
    pieces, count = ndi.label(mask == class_id)
    assert count, f"class {class_id} absent"
    sizes = np.bincount(pieces.ravel())[1:]
    return pieces == sizes.argmax() + 1


def _injected(sample_id):
    """The clean mask and a noisy copy with three named kinds of noise, and where each is."""
    clean = _mask(sample_id)
    noisy = clean.copy()
    present = [c for c in (14, 15, 16, 17, 18, 19) if (clean == c).sum() >= 200]
    swapped = _largest(clean, present[0])
    noisy[swapped] = LEFT_RIGHT_SWAP[present[0]]
    erased = _largest(clean, 2 if (clean == 2).sum() >= 200 else 13)  # hair, else face
    noisy[erased] = 0
    wrong = _largest(clean, 5)  # upper clothes painted as coat (7)
    noisy[wrong] = 7
    return (
        clean,
        noisy,
        {
            "left/right swap": swapped,
            "extra part": None,
            "missed part": None,
            "wrong class": wrong,
            "erased": erased,
        },
    )


@pytest.mark.parametrize("sample_id", ["0002190", "0005008", "0026375"])
def test_injected_noise_is_found_with_its_kind(sample_id):
    clean, noisy, where = _injected(sample_id)
    labels, confidence = audit.labels_and_confidence(_oracle(clean))
    assert np.array_equal(labels, clean)
    assert audit.suspect_regions(clean, labels, confidence) == []  # clean: nothing suspect
    found = audit.suspect_regions(noisy, labels, confidence)
    kinds = {region.kind for region in found}
    assert {"left/right swap", "wrong class"} <= kinds
    # an erased part is background in the mask where the model sees a part: a missed part
    assert "missed part" in kinds
    for kind, area in (
        ("left/right swap", where["left/right swap"]),
        ("missed part", where["erased"]),
        ("wrong class", where["wrong class"]),
    ):
        region = max((r for r in found if r.kind == kind), key=lambda r: r.area)
        top, left, bottom, right = region.bbox
        rows, cols = np.nonzero(area)
        assert top <= rows.mean() < bottom and left <= cols.mean() < right
        assert region.area >= 0.5 * area.sum()
        assert region.confidence >= 0.8


def test_noisy_samples_rank_first_and_an_extra_part_is_named():
    regions = {}
    for sample_id in ("0002190", "0005008", "0026375"):
        clean, noisy, _ = _injected(sample_id)
        labels, confidence = audit.labels_and_confidence(_oracle(clean))
        regions[sample_id + "-noisy"] = audit.suspect_regions(noisy, labels, confidence)
        regions[sample_id] = audit.suspect_regions(clean, labels, confidence)
    ranking = audit.rank_samples(regions)
    assert {key for key, _ in ranking[:3]} == {k for k in regions if k.endswith("-noisy")}
    assert all(total == 0 for _, total in ranking[3:])
    clean = _mask("0026375")
    labels, confidence = audit.labels_and_confidence(_oracle(clean))
    noisy = clean.copy()
    background = np.argwhere(clean == 0)[0]
    noisy[background[0] : background[0] + 12, background[1] : background[1] + 12] = 6  # a dress
    (extra,) = [r for r in audit.suspect_regions(noisy, labels, confidence) if r.area >= 100]
    assert extra.kind == "extra part" and (extra.mask_class, extra.model_class) == (6, 0)
    assert audit.region_dict(extra)["bbox"] == list(extra.bbox)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="must have one shape"):
        audit.suspect_regions(
            np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), np.zeros((4, 4))
        )


def test_audit_command_ranks_the_samples(cihp_samples, model_file, tmp_path, capsys):
    import json

    from napari_deeplab.cli import EXIT_ERROR, EXIT_OK, main

    arguments = ["audit", str(cihp_samples), "--model", str(model_file), "--min-confidence", "0"]
    assert main([*arguments, "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert sorted(entry["id"] for entry in listed) == ["0002190", "0005008", "0026375"]
    strengths = [entry["strength"] for entry in listed]
    assert strengths == sorted(strengths, reverse=True)
    for entry in listed:
        assert entry["strength"] == pytest.approx(sum(r["strength"] for r in entry["regions"]))
        assert all(r["kind"] in audit.KINDS and len(r["bbox"]) == 4 for r in entry["regions"])
    assert main([*arguments, "--top", "1"]) == EXIT_OK
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[1] == listed[0]["id"]
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty"), "--model", str(model_file)]) == EXIT_ERROR
    assert "no labelled samples" in capsys.readouterr().err
