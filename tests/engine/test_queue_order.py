"""The review queue's order (queue_order): exact orders, the photo in hand kept in place."""

import pytest

from napari_deeplab.queue_order import default_mode, ordered, ranked, score_text

IDS = ["a", "b", "c", "d", "e"]
SCORES = {"c": {"score": 0.9}, "a": {"score": 0.2}, "e": {"score": 0.5}}


def test_by_name_and_by_score_with_the_unscored_last():
    assert ordered(["c", "a", "b", "a"], SCORES, "name") == ["a", "b", "c"]
    assert ordered(IDS, SCORES, "score") == ["c", "e", "a", "b", "d"]
    # ties by name; scores of photos not in the queue are ignored
    tied = {"b": {"score": 0.5}, "a": {"score": 0.5}, "zz": {"score": 1.0}}
    assert ranked(["b", "a", "c"], tied, "score") == ["a", "b", "c"]


def test_the_photo_in_hand_and_the_walked_part_keep_their_places():
    previous = ["a", "b", "c", "d", "e"]  # walked by name up to "c"
    # switching to score order: a, b, c stay; d, e follow by score (e scored, d not)
    assert ordered(IDS, SCORES, "score", in_hand="c", previous=previous) == [
        "a",
        "b",
        "c",
        "e",
        "d",
    ]
    # new scores re-rank only what is ahead of the photo in hand, never the photo itself
    rescored = {**SCORES, "c": {"score": 0.0}, "d": {"score": 0.99}}
    order = ordered(IDS, rescored, "score", in_hand="e", previous=["c", "e", "a", "b", "d"])
    assert order == ["c", "e", "d", "a", "b"]
    assert order.index("e") == 1


def test_photos_gone_or_new_and_an_unknown_in_hand():
    # "b" left the folder, "f" arrived: the walked part loses "b", "f" is ranked ahead
    assert ordered(["a", "c", "d", "f"], {"f": {"score": 0.7}}, "score", "c", IDS) == [
        "a",
        "c",
        "f",
        "d",
    ]
    # a photo in hand that is not in the previous order: the order is the ranking itself
    assert ordered(IDS, SCORES, "score", in_hand="d", previous=["a"]) == ranked(
        IDS, SCORES, "score"
    )
    assert ordered(IDS, SCORES, "score", in_hand="zz", previous=IDS) == ranked(IDS, SCORES, "score")


def test_the_default_order_and_the_score_shown():
    assert default_mode(IDS, SCORES) == "name"  # b and d have no score yet
    assert default_mode(["a", "c"], SCORES) == "score"
    assert default_mode([], SCORES) == "name"
    assert score_text({"score": 0.42139}) == "score 0.421"
    assert score_text(None) == ""


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="unknown queue order 'size'"):
        ordered(IDS, SCORES, "size")


# --- the queue's order in its state (ReviewQueue), with the real CIHP photos ----------------

CIHP_IDS = ["0002190", "0005008", "0026375"]


def _photos(tmp_path, cihp_samples, extra=("0099999",)):
    """The CIHP photos and copies under other ids (a queue of four)."""
    import shutil

    photos = shutil.copytree(cihp_samples / "Images", tmp_path / "photos")
    for name in extra:
        shutil.copy(photos / "0002190.jpg", photos / f"{name}.jpg")
    return photos


def _ids(queue):
    return [item.sample_id for item in queue.items]


def test_the_queue_orders_by_recorded_scores_and_resumes(tmp_path, cihp_samples):
    from napari_deeplab import cihp
    from napari_deeplab.review import ReviewQueue

    photos, root = _photos(tmp_path, cihp_samples), tmp_path / "dataset"
    queue = ReviewQueue(photos, root)
    assert queue.order_mode == "name" and _ids(queue) == [*CIHP_IDS, "0099999"]
    # every photo scored (as predict --scores on a server writes them): opened again, least
    # confident first is the default
    scores = {"0002190": 0.1, "0005008": 0.7, "0026375": 0.3, "0099999": 0.5}
    queue.record_scores({i: {"score": s} for i, s in scores.items()}, model="m1")
    assert cihp.read_scores(root)["0005008"]["model"] == "m1"
    queue = ReviewQueue(photos, root)
    assert queue.order_mode == "score"
    # the photo in hand (the first, by name, when it was closed) stays; the rest by score
    assert _ids(queue) == ["0002190", "0005008", "0099999", "0026375"]
    queue.go_to(1)  # 0005008 in hand

    # new scores: what is ahead is ranked again, the photo in hand and before it stay
    queue.record_scores({"0026375": {"score": 0.9}, "0005008": {"score": 0.0}}, model="m2")
    assert queue.reorder() is True
    assert _ids(queue) == ["0002190", "0005008", "0026375", "0099999"]
    assert queue.position == 1 and queue.items[queue.position].sample_id == "0005008"

    # resume: the same list, the same photo; the annotator's choice of order is kept
    again = ReviewQueue(photos, root)
    assert _ids(again) == _ids(queue) and again.position == 1
    again.set_order("name")
    assert _ids(again) == ["0002190", "0005008", "0026375", "0099999"]
    again.go_to(0)
    again.set_order("name")
    assert _ids(again) == sorted(_ids(again))
    again.set_order("score")
    assert _ids(again) == ["0002190", "0026375", "0099999", "0005008"]
    again.go_to(2)
    assert _ids(ReviewQueue(photos, root)) == _ids(again)
    assert ReviewQueue(photos, root).items[again.position].sample_id == "0099999"
    again.set_order("name")
    assert ReviewQueue(photos, root).order_mode == "name"
    with pytest.raises(ValueError, match="unknown queue order"):
        again.set_order("random")


def test_an_annotator_new_to_the_queue_starts_at_the_least_confident(
    tmp_path, cihp_samples, monkeypatch
):
    from napari_deeplab.cihp import ANNOTATOR_ENV
    from napari_deeplab.review import ReviewQueue

    photos, root = _photos(tmp_path, cihp_samples), tmp_path / "dataset"
    monkeypatch.setenv(ANNOTATOR_ENV, "alice")
    scores = {"0002190": 0.1, "0005008": 0.7, "0026375": 0.3, "0099999": 0.5}
    ReviewQueue(photos, root).record_scores({i: {"score": s} for i, s in scores.items()}, "m")
    monkeypatch.setenv(ANNOTATOR_ENV, "bob")
    bob = ReviewQueue(photos, root)
    assert _ids(bob) == ["0005008", "0099999", "0026375", "0002190"] and bob.position == 0


def test_held_photos_stay_held_although_the_dataset_lists_them(tmp_path, cihp_samples):
    import numpy as np

    from napari_deeplab.review import ReviewQueue

    photos, root = _photos(tmp_path, cihp_samples, extra=()), tmp_path / "dataset"
    queue = ReviewQueue(photos, root)
    a, b, c = CIHP_IDS
    for sample_id in (a, b, c):
        size = np.array(__import__("PIL.Image").Image.open(photos / f"{sample_id}.jpg")).shape
        queue.accept(sample_id, np.full(size[:2], 2, np.uint8))
    assert queue.accepted_ids() == [a, b, c] and queue.exported_count() == 3

    audit = [{"id": b, "strength": 900.0, "regions": [{"bbox": [1, 2, 30, 40], "kind": "x"}]}]
    audit.append({"id": "not-here", "strength": 1.0, "regions": []})
    assert queue.open_checks(audit) == ([b], 1)
    queue.flag(c, "left arm is the right arm")
    again = ReviewQueue(photos, root)  # the dataset lists all three: b and c stay held
    assert [again.state(i) for i in CIHP_IDS] == ["exported", "to-check", "flagged"]
    assert again.accepted_ids() == [a] and again.held_ids() == [b, c]
    assert again.exported_count() == 1
    assert again.note(c) == "left arm is the right arm" and again.note(a) is None
    assert again.suspect_regions(b) == audit[0]["regions"] and again.suspect_regions(a) == []
    assert again.move(1, skip_exported=True) == 1  # the photo to check is not skipped

    again.send_back(a)
    assert again.state(a) == "returned" and again.accepted_ids() == []
    again.unflag(c)
    assert (
        again.full_state(c) == "exported-reviewed" and again.note(c) == "left arm is the right arm"
    )
    # accepted again: exported again
    again.accept(b, np.full((313, 576), 3, np.uint8))
    assert ReviewQueue(photos, root).accepted_ids() == [b, c]


def test_untouched_drafts_are_replaced_and_edited_ones_never(tmp_path, cihp_samples):
    import numpy as np

    from napari_deeplab.review import ReviewQueue

    photos, root = _photos(tmp_path, cihp_samples), tmp_path / "dataset"
    queue = ReviewQueue(photos, root)
    a, b, c, d = _ids(queue)
    for sample_id in (a, b, c, d):
        queue.save_draft(sample_id, np.zeros((4, 4), np.uint8), corrected=False)
    queue.record_scores({d: {"score": 0.3}}, model="new")  # d made by the new model
    queue.save_draft(b, np.ones((4, 4), np.uint8), corrected=True)
    corrected_bytes = queue.draft_path(b).read_bytes()
    queue.set_state(c, "seen")
    assert queue.untouched("new", in_hand=a) == [c]
    assert queue.untouched("other") == [a, c, d]
    assert queue.replace_untouched_draft(c, np.full((4, 4), 5, np.uint8)) is True
    assert queue.load_draft(c).max() == 5 and queue.state(c) == "pre-labelled"
    assert queue.replace_untouched_draft(b, np.full((4, 4), 5, np.uint8)) is False
    assert queue.draft_path(b).read_bytes() == corrected_bytes
