"""A review queue: a folder of photos (or a CIHP split) worked through one by one into a dataset.

Each photo has a state, with who set it and when (:data:`STATES`): ``new``, ``pre-labelled``
(the model's draft is saved), ``seen`` (shown long enough to be looked at, not edited),
``corrected`` (the annotator's draft is saved), ``flagged`` (needs a second look),
``exported-reviewed`` (accepted in the queue into the dataset's split) or ``exported`` (in the
dataset's split, written by something else: ``predict --out``, File > Save, another queue).

The queue is shared by a team: drafts, states and claims live in the dataset folder
(``<root>/.napari-deeplab/review/<key>/``), each annotator (user and host) keeps a position of
their own, and a photo shown is *claimed* (:meth:`ReviewQueue.claim`) so that no other process
works on it at the same time. Every write of the shared state merges under a lock
(``filelock``), so two annotators' states never overwrite each other. The edits in hand are
kept in ``in-hand/<id>.png`` (:meth:`ReviewQueue.save_in_hand`) a moment after each change, so
a crash loses at most those seconds. A draft's people (the Review queue's Propose people, made
ahead with the parts, then as edited) are kept in ``people/<id>.png``. No napari here:
``_napari.review_widget`` drives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from . import cihp, files
from .photos import list_photos
from .prelabel import IMAGE_SUFFIXES
from .review_queue_more import EXTRA_MAPS, HELD_STATES, QueueExtras

STATES = (
    "new",
    "pre-labelled",
    "seen",
    "corrected",
    "flagged",
    "to-check",
    "returned",
    "exported",
    "exported-reviewed",
)
"""Every state a photo can have (the state file's values)."""
EXPORTED_STATES = ("exported", "exported-reviewed")
SHORT_STATES = {"exported-reviewed": "exported"}
""":meth:`ReviewQueue.state` gives the short name: an export is "exported" whoever made it
(:meth:`ReviewQueue.full_state` tells them apart)."""
STATE_FILE_VERSION = 2
"""Version 1 (no ``version`` key) knew only Accept as a way into the dataset: its
``exported`` is read as ``exported-reviewed``."""

CLAIM_HEARTBEAT_S = 30.0
"""How often a live process renews its claim."""
CLAIM_LAPSE_S = 180.0
"""A claim not renewed for this long lapses (the only test for another host's process)."""
LOCK_TIMEOUT_S = 30.0


def annotator() -> dict:
    """Who this process works for: user (:func:`cihp.annotator_name`), host, pid."""
    return {"user": cihp.annotator_name(), "host": socket.gethostname(), "pid": os.getpid()}


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def when(iso: str | None) -> str:
    """``2026-12-02T01:02:03Z`` as ``2026-12-02 01:02:03 UTC``; unknown times as "?"."""
    if iso is None:
        return "?"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return "?"


def _clock(iso: str | None) -> str:
    """``2026-12-02T01:02:03+00:00`` as ``01:02 UTC``; unknown times as "?"."""
    if iso is None:
        return "?"
    try:
        return datetime.fromisoformat(iso).strftime("%H:%M:%S UTC")
    except (TypeError, ValueError):
        return "?"


_KEEP = object()  # set_state: the base version stays as it is


@dataclass
class QueueItem:
    sample_id: str
    photo: Path


@dataclass
class Claim:
    """Who holds a photo: one process of one annotator, renewed at ``heartbeat`` (epoch)."""

    sample_id: str
    user: str
    host: str
    pid: int
    time: str
    heartbeat: float
    token: str = ""

    @property
    def who(self) -> str:
        return f"{self.user}@{self.host}"

    def describe(self) -> str:
        return f"claimed by {self.who} (process {self.pid}) since {_clock(self.time)}"

    def lapsed(self, now: float | None = None) -> bool:
        """Whether the claim no longer holds: its process is gone (same host) or it was not
        renewed for :data:`CLAIM_LAPSE_S` (any host; clocks assumed in step within a minute)."""
        now = time.time() if now is None else now
        if now - self.heartbeat > CLAIM_LAPSE_S:
            return True
        return self.host == socket.gethostname() and not files.process_alive(self.pid)


@dataclass
class ExportRecord:
    """What an Accept changed, for :meth:`ReviewQueue.undo_export`."""

    sample_id: str
    version_after: str | None
    before: Path | None  # a copy of the sample's files before the Accept; None: it was new
    entry_before: dict = field(default_factory=dict)


def queue_items(source: str | os.PathLike) -> list[QueueItem]:
    """The photos of ``source``: a folder of photos, or a CIHP split (or root, its first split)."""
    source = Path(source)
    try:
        location = cihp.locate(source)
    except ValueError:  # not a dataset: a folder of photos
        location = None
    folder = source
    if location is not None and location.sample_id is None:
        folder = location.folder / "Images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no such folder")
    photos = list_photos(folder)
    if not photos:
        raise FileNotFoundError(f"{source}: no photos ({', '.join(IMAGE_SUFFIXES)})")
    items = [QueueItem(cihp.sample_id_of_file(p), p) for p in photos]
    ids = [item.sample_id for item in items]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        names = ", ".join(item.photo.name for item in items if item.sample_id == twice)
        raise ValueError(
            f"{source}: the photos {names} share a file stem, the id {twice!r} (ids are "
            "file stems, their dots written as '_'); rename one"
        )
    for sample_id in ids:
        cihp.check_new_sample_id(sample_id)
    return items


class ReviewQueue(QueueExtras):
    """The state of reviewing ``source`` into ``<root>/<split>``, shared by every annotator.

    The state file (``queue.json``: each photo's state, who set it and when, the dataset
    version each draft is based on, each annotator's position) is checked when loaded. A
    damaged one (not JSON, truncated, wrong types, a position out of range, an unknown state)
    is moved aside as ``queue.json.corrupt-<time>`` and the state rebuilt from the disk: the
    exported samples from the split's id list, and every draft found counted as ``corrected``
    (edit-protected: better to protect a model draft than to expose an annotator's). What
    happened is in :attr:`warnings`, one line each, naming the files.

    Each change of the state file is one transaction under ``queue.json.lock``: the file is
    read again, the one photo's entry (or the one position) changed, the file replaced
    atomically; so annotators' changes merge. :meth:`refresh` reads the others' changes.
    """

    def __init__(self, source: str | os.PathLike, root: str | os.PathLike, split: str = "Training"):
        self.source = Path(source).resolve()
        self.root = Path(root)
        self.split = cihp.check_split(split)
        self.items = queue_items(self.source)
        self._ids = {item.sample_id: i for i, item in enumerate(self.items)}
        self.me = annotator()
        self.me_key = f"{self.me['user']}@{self.me['host']}"
        key = hashlib.sha1(str(self.source).encode()).hexdigest()[:12]
        self.folder = self.root / ".napari-deeplab" / "review" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temporaries(self.folder)
        self._state_file = self.folder / "queue.json"
        self.warnings: list[str] = []
        self._stored = self._load_state()
        self.position = self._my_position(self._stored)
        self._states: dict[str, str] = {}
        self._derive()
        self._open_order()  # self.items in this annotator's order (review_queue_more)

    # --- the state file ----------------------------------------------------------------------

    def _load_state(self) -> dict:
        """The stored state; rebuilt when it is missing or damaged."""
        if not self._state_file.exists():
            return _empty_state()
        try:
            return _parse_state(self._state_file.read_bytes(), len(self.items))
        except ValueError as error:
            aside = self._state_file.with_name(
                f"{self._state_file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            os.replace(self._state_file, aside)
            self.warnings.append(
                f"{self._state_file}: the review queue's state was damaged ({error}); moved to "
                f"{aside.name} and rebuilt from the dataset and the drafts (drafts marked corrected)"
            )
            return self._rebuilt_state()

    def _rebuilt_state(self) -> dict:
        stored = _empty_state()
        stored["states"] = {
            item.sample_id: "corrected"
            for item in self.items
            if self.draft_path(item.sample_id).exists()
        }
        return stored

    def _my_position(self, stored: dict) -> int:
        position = stored["positions"].get(
            self.me_key, stored["position"] if not stored["positions"] else 0
        )
        return max(0, min(position, len(self.items) - 1))

    def _derive(self) -> None:
        """The states shown: the stored ones, the dataset's id list (a listed photo is
        exported), and drafts whose state was never saved (corrected)."""
        states = dict(self._stored["states"])
        exported = set(self._listed())
        for item in self.items:
            sample_id = item.sample_id
            state = states.get(sample_id, "new")
            if sample_id in exported:
                if state not in EXPORTED_STATES and state not in HELD_STATES:
                    states[sample_id] = "exported"
            elif state == "new" and self.draft_path(sample_id).exists():
                states[sample_id] = "corrected"  # a draft whose state was never saved
        self._states = states

    def _listed(self) -> list[str]:
        return cihp.list_samples(self.root, self.split) if (self.root / self.split).is_dir() else []

    def refresh(self) -> None:
        """Read the state the other annotators wrote (a damaged file is kept as it is)."""
        try:
            self._stored = _parse_state(self._state_file.read_bytes(), len(self.items))
        except (OSError, ValueError):
            return
        self._derive()

    def _update(self, change) -> None:
        """One transaction on the state file: read it again, ``change(stored)``, replace it."""
        with self._locked():
            try:
                stored = _parse_state(self._state_file.read_bytes(), len(self.items))
            except (OSError, ValueError):
                stored = self._stored  # gone or damaged meanwhile: ours is the best there is
            change(stored)
            stored["positions"][self.me_key] = self.position
            stored["position"] = self.position
            text = json.dumps(
                {"version": STATE_FILE_VERSION, "source": str(self.source), **stored}, indent=1
            )
            files.write_file_atomically(
                self._state_file, lambda tmp: tmp.write_text(text, encoding="utf-8")
            )
        self._stored = stored
        self._derive()

    def _locked(self):
        return _acquired(
            self.folder / "queue.json.lock",
            "another napari holds the review queue's lock; try again, or remove "
            "the file if no napari is running",
        )

    def _save(self) -> None:
        self._update(lambda stored: None)

    # --- states ------------------------------------------------------------------------------

    def state(self, sample_id: str) -> str:
        """The photo's state, exports by anyone as ``exported`` (see :meth:`full_state`)."""
        state = self.full_state(sample_id)
        return SHORT_STATES.get(state, state)

    def full_state(self, sample_id: str) -> str:
        return self._states.get(sample_id, "new")

    def writer_of(self, sample_id: str) -> dict | None:
        """{user, host, pid, time} of the last change of the photo's state, if known."""
        return self._stored["by"].get(sample_id)

    def describe(self, sample_id: str) -> str:
        """``exported-reviewed by alice@host, 01:02:03 UTC``."""
        by = self.writer_of(sample_id)
        state = self.full_state(sample_id)
        if by is None or self._stored["states"].get(sample_id) != state:
            return state
        return f"{state} by {by['user']}@{by['host']}, {_clock(by.get('time'))}"

    def set_state(self, sample_id: str, state: str, base=_KEEP) -> None:
        """Record ``state`` of the photo, by this annotator now; ``base``: the dataset version
        its draft is now based on (by default unchanged)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self.item(sample_id)
        entry = {**self.me, "time": _utc(time.time())}

        def change(stored):
            stored["states"][sample_id] = state
            stored["by"][sample_id] = entry
            if base is not _KEEP:
                stored["bases"][sample_id] = base

        self._update(change)

    def exported_count(self) -> int:
        return sum(self.full_state(item.sample_id) in EXPORTED_STATES for item in self.items)

    def base_version(self, sample_id: str) -> str | None:
        """The dataset version of the sample that the queue's draft of it is based on."""
        return self._stored["bases"].get(sample_id)

    def set_base_version(self, sample_id: str, version: str | None) -> None:
        def change(stored):
            stored["bases"][sample_id] = version

        self._update(change)

    def dataset_version(self, sample_id: str) -> str | None:
        """The dataset's current version of the sample (None: not listed)."""
        if not (self.root / self.split).is_dir():
            return None
        return cihp.sample_version(self.root, sample_id, self.split)

    def dataset_writer(self, sample_id: str) -> dict | None:
        if not (self.root / self.split).is_dir():
            return None
        return cihp.sample_writer(self.root, sample_id, self.split)

    # --- drafts and the work in hand -----------------------------------------------------------

    def draft_path(self, sample_id: str) -> Path:
        return self.folder / f"{cihp.check_sample_id(sample_id)}.png"

    def in_hand_path(self, sample_id: str) -> Path:
        return self.folder / "in-hand" / f"{cihp.check_sample_id(sample_id)}.png"

    def load_draft(self, sample_id: str) -> np.ndarray | None:
        """The saved draft (H x W uint8 class ids), or None. A damaged draft is moved aside
        (``<id>.png.corrupt-<time>``, named in :attr:`warnings`) and None returned."""
        return self._load_png(self.draft_path(sample_id), "draft")

    def load_in_hand(self, sample_id: str) -> np.ndarray | None:
        """The edits in hand saved by :meth:`save_in_hand` (a napari that ended without
        saving them as the draft), or None."""
        return self._load_png(self.in_hand_path(sample_id), "work in hand")

    def _load_png(self, path: Path, what: str) -> np.ndarray | None:
        if not path.exists():
            return None
        try:
            with Image.open(path) as draft:
                return np.array(draft)
        except (OSError, ValueError, SyntaxError) as error:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            self.warnings.append(
                f"{path}: the {what} cannot be read ({error}); moved to {aside.name}"
            )
            return None

    def save_draft(self, sample_id: str, labels: np.ndarray, corrected: bool) -> bool:
        """Keep a draft; ``corrected`` marks the annotator's (else the model's) work.

        An annotator's draft replaces any draft atomically, and is marked ``corrected`` before
        it is written, so a crash in between protects it. A model's draft is only created
        (atomically and exclusively: another process's draft is never replaced); False if
        there was one already."""
        labels = np.asarray(labels, np.uint8)
        if corrected:
            if self.full_state(sample_id) != "corrected":
                self.set_state(sample_id, "corrected")
            files.write_file_atomically(
                self.draft_path(sample_id), lambda tmp: cihp.save_label_png(labels, tmp)
            )
            return True
        if not _create_exclusively(
            self.draft_path(sample_id), lambda tmp: cihp.save_label_png(labels, tmp)
        ):
            return False
        if self.full_state(sample_id) == "new":
            self.set_state(sample_id, "pre-labelled")
        return True

    def people_draft_path(self, sample_id: str) -> Path:
        return self.folder / "people" / f"{cihp.check_sample_id(sample_id)}.png"

    def load_people_draft(self, sample_id: str) -> np.ndarray | None:
        """The draft's people (H x W uint8, 0 background, 1..N people), or None. A damaged
        file is moved aside like a damaged draft."""
        return self._load_png(self.people_draft_path(sample_id), "draft's people")

    def save_people_draft(self, sample_id: str, people: np.ndarray) -> None:
        """Keep the draft's people (atomically); they are matched to the parts when shown."""
        people = np.asarray(people, np.uint8)
        files.write_file_atomically(
            self.people_draft_path(sample_id), lambda tmp: cihp.save_label_png(people, tmp)
        )

    def save_in_hand(self, sample_id: str, labels: np.ndarray) -> None:
        """Keep the edits in hand (atomically; a fast PNG, see :func:`cihp.save_label_png`)."""
        labels = np.asarray(labels, np.uint8)
        files.write_file_atomically(
            self.in_hand_path(sample_id), lambda tmp: cihp.save_label_png(labels, tmp)
        )

    def drop_in_hand(self, sample_id: str) -> None:
        self.in_hand_path(sample_id).unlink(missing_ok=True)

    def opening(self, sample_id: str) -> tuple[np.ndarray | None, str | None, str]:
        """What to show for the photo: (labels or None, the dataset version they are based
        on, where they come from: "draft", "dataset" or "none"). The dataset's mask when the
        dataset's sample is newer than the draft (written since by another annotator, File >
        Save, ``predict --overwrite``), else the draft."""
        version = self.dataset_version(sample_id)
        if version is not None and version != self.base_version(sample_id):
            try:
                labels = cihp.read_sample(self.root, sample_id, self.split).category_ids
            except (OSError, ValueError) as error:
                self.warnings.append(
                    f"{sample_id}: the dataset's sample cannot be read "
                    f"({error}); showing the queue's draft"
                )
            else:
                if labels is not None:
                    return labels, version, "dataset"
        draft = self.load_draft(sample_id)
        return draft, version, "none" if draft is None else "draft"

    # --- export ------------------------------------------------------------------------------

    def accept(
        self,
        sample_id: str,
        labels: np.ndarray,
        human_ids: np.ndarray | None = None,
        expected_version=cihp.ANY_VERSION,
    ) -> ExportRecord:
        """Export the sample into the dataset (its photo copied byte for byte; the dataset's
        commit protocol). ``expected_version``: the dataset version the annotator started
        from (None: not in the dataset); :class:`cihp.SampleChangedError` if it changed since.
        Returns what :meth:`undo_export` needs to put the dataset back."""
        item = self.item(sample_id)
        current = self.dataset_version(sample_id)
        if expected_version is cihp.ANY_VERSION:
            expected_version = current
        before = self._keep_sample(sample_id) if current is not None else None
        entry_before = self._entry(sample_id)
        try:
            cihp.write_sample(
                self.root,
                sample_id,
                labels,
                split=self.split,
                image_path=item.photo,
                human_ids=human_ids,
                overwrite=True,
                expected_version=expected_version,
                writer_tool="review",
            )
        except BaseException:
            if before is not None:
                shutil.rmtree(before, ignore_errors=True)
            raise
        after = self.dataset_version(sample_id)
        self.save_draft(sample_id, labels, corrected=True)
        if human_ids is not None:
            self.save_people_draft(sample_id, human_ids)
        self.set_state(sample_id, "exported-reviewed", base=after)
        self.drop_in_hand(sample_id)
        return ExportRecord(sample_id, after, before, entry_before)

    def _entry(self, sample_id: str) -> dict:
        return {key: self._stored[key].get(sample_id) for key in ("states", "by", "bases")}

    def _keep_sample(self, sample_id: str) -> Path:
        """Copy the sample's files as they are now (for Undo)."""
        kept = self.folder / "undo" / f"{sample_id}-{uuid.uuid4().hex[:8]}"
        kept.mkdir(parents=True)
        photo = cihp.find_image(self.root, sample_id, self.split)
        shutil.copy2(photo, kept / f"photo{photo.suffix}")
        paths = cihp.sample_paths(self.root, sample_id, self.split)
        for key in ("Category_ids", "Human_ids"):
            if paths[key].exists():
                shutil.copy2(paths[key], kept / f"{key}.png")
        return kept

    def undo_export(self, record: ExportRecord) -> None:
        """Put the dataset's sample (and id list) back as it was before the Accept of
        ``record``: unlisted if it was new, else its earlier files written back; refused
        (:class:`cihp.SampleChangedError`) if the sample changed since that Accept. The
        accepted mask stays the queue's draft (``corrected``)."""
        sample_id = record.sample_id
        if record.before is None:
            cihp.remove_sample(
                self.root, sample_id, self.split, expected_version=record.version_after
            )
        else:
            kept = record.before
            photo = next(kept.glob("photo.*"))
            people = kept / "Human_ids.png"
            cihp.write_sample(
                self.root,
                sample_id,
                # an unreadable kept mask (None) fails in write_sample, as before
                self._load_png(kept / "Category_ids.png", "kept mask"),  # type: ignore[arg-type]
                split=self.split,
                image_path=photo,
                overwrite=True,
                human_ids=(  # none before: the Accept's people go too
                    self._load_png(people, "kept people") if people.exists() else cihp.NO_PEOPLE
                ),
                expected_version=record.version_after,
                writer_tool="review undo",
            )
            shutil.rmtree(kept, ignore_errors=True)
        self.set_state(sample_id, "corrected", base=self.dataset_version(sample_id))

    @staticmethod
    def forget_export(record: ExportRecord | None) -> None:
        """An Accept that will not be undone: remove its copy of the earlier sample."""
        if record is not None and record.before is not None:
            shutil.rmtree(record.before, ignore_errors=True)

    def keep_aside(self, sample_id: str, labels: np.ndarray) -> Path:
        """Keep an annotator's mask that was not exported (``kept/<id>-<time>.png``)."""
        path = self.folder / "kept" / f"{sample_id}-{time.strftime('%Y%m%d-%H%M%S')}.png"
        labels = np.asarray(labels, np.uint8)
        return files.write_file_atomically(path, lambda tmp: cihp.save_label_png(labels, tmp))

    # --- claims ------------------------------------------------------------------------------
    #
    # A claim is claims/<id>.json, made complete under a temporary name and then linked to its
    # name (os.link fails if the name exists: exclusive, and never seen half-written; where
    # links are not supported, O_CREAT | O_EXCL). Taking over a lapsed claim and releasing one
    # happen under claims/.lock (filelock). On a shared network folder this assumes what the
    # dataset's commit protocol assumes: NFS v3+/SMB with working link() or O_EXCL and locks,
    # and host clocks within a minute of each other (another host's claim lapses by its age).

    def _claim_path(self, sample_id: str) -> Path:
        return self.folder / "claims" / f"{cihp.check_sample_id(sample_id)}.json"

    def _read_claim(self, path: Path) -> Claim | None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            return Claim(
                path.stem,
                str(stored["user"]),
                str(stored["host"]),
                int(stored["pid"]),
                str(stored["time"]),
                float(stored["heartbeat"]),
                str(stored.get("token", "")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # damaged: lapses like an old one
            return Claim(path.stem, "?", "?", 0, "", 0.0)

    def _mine(self, claim: Claim) -> bool:
        return claim.host == self.me["host"] and claim.pid == self.me["pid"]

    def claims(self) -> dict[str, Claim]:
        """The live claims of other processes, by sample id."""
        folder = self.folder / "claims"
        try:
            paths = list(folder.glob("*.json"))
        except OSError:
            return {}
        now = time.time()
        live = {}
        for path in paths:
            claim = self._read_claim(path)
            if (
                claim is not None
                and path.stem in self._ids
                and not self._mine(claim)
                and not claim.lapsed(now)
            ):
                live[path.stem] = claim
        return live

    def claim(self, sample_id: str) -> Claim | None:
        """Claim the photo for this process; None when it is ours now, else the live claim of
        the process that holds it. A lapsed claim is taken over."""
        path = self._claim_path(sample_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        record = {**self.me, "time": _utc(now), "heartbeat": now, "token": uuid.uuid4().hex}
        with self._claims_locked():
            held = self._read_claim(path)
            if held is not None:
                if not self._mine(held) and not held.lapsed(now):
                    return held
                path.unlink(missing_ok=True)
            if not _create_exclusively(path, lambda tmp: tmp.write_text(json.dumps(record))):
                return self._read_claim(path)
        return None

    def renew(self, sample_id: str) -> bool:
        """Renew this process's claim (a heartbeat); False if it is not ours any more."""
        path = self._claim_path(sample_id)
        with self._claims_locked():
            held = self._read_claim(path)
            if held is None or not self._mine(held):
                return False
            now = time.time()
            record = {**self.me, "time": held.time, "heartbeat": now, "token": held.token}
            files.write_file_atomically(path, lambda tmp: tmp.write_text(json.dumps(record)))
        return True

    def release(self, sample_id: str) -> None:
        """End this process's claim of the photo (another's is left alone)."""
        path = self._claim_path(sample_id)
        if not path.exists():
            return
        with self._claims_locked():
            held = self._read_claim(path)
            if held is not None and self._mine(held):
                path.unlink(missing_ok=True)

    def _claims_locked(self):
        return _acquired(
            self.folder / "claims" / ".lock", "the claims are locked by another napari; try again"
        )

    # --- moving ------------------------------------------------------------------------------

    def item(self, sample_id: str) -> QueueItem:
        return self.items[self._ids[sample_id]]

    def go_to(self, position: int) -> None:
        """Make ``position`` the photo in hand (remembered for this annotator)."""
        self.position = max(0, min(position, len(self.items) - 1))
        self._save()

    def move(self, step: int, skip_exported: bool = False, skip=None) -> int:
        """Move the position by ``step``, skipping exported photos if asked and the photos
        ``skip(sample_id)`` is true of (claimed by others); return it."""
        position = self.position
        while step and 0 <= position + step < len(self.items):
            position += step
            sample_id = self.items[position].sample_id
            if skip_exported and self.state(sample_id) == "exported":
                continue
            if skip is not None and skip(sample_id):
                continue
            self.position = position
            break
        self._save()
        return self.position


class _Releasing:
    def __init__(self, lock: FileLock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.lock.release()


def _acquired(path: Path, why: str) -> _Releasing:
    """The queue's file lock at ``path`` (its folder made), held until the ``with`` ends;
    ``OSError`` "<path>: <why>" when another process holds it for :data:`LOCK_TIMEOUT_S`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise OSError(f"{lock.lock_file}: {why}") from None
    return _Releasing(lock)


def _create_exclusively(path: Path, write) -> bool:
    """Create ``path`` whole, only if it does not exist: written under a temporary name, then
    linked to ``path`` (O_CREAT | O_EXCL where links are not supported). False if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = files.temporary_path(path)
    try:
        write(staged)
        try:
            os.link(staged, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FAT folders)
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as file:
                file.write(staged.read_bytes())
                file.flush()
                os.fsync(file.fileno())
        return True
    finally:
        staged.unlink(missing_ok=True)


def _empty_state() -> dict:
    return {
        "position": 0,
        "positions": {},
        "states": {},
        "by": {},
        "bases": {},
        **{key: {} for key in EXTRA_MAPS},
    }


def _parse_state(data: bytes, item_count: int) -> dict:
    """Validate a state file's content; ``ValueError`` says what is wrong."""
    try:
        stored = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(stored, dict):
        raise ValueError("not a JSON object")

    def place(position):
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ValueError(f"position {position!r} is not a photo's place in the queue")
        return min(position, item_count - 1)  # photos may have been removed since

    position = place(stored.get("position", 0))
    states = stored.get("states", {})
    if not isinstance(states, dict):
        raise ValueError("states is not a mapping of ids to states")
    if "version" not in stored:  # version 1: only Accept exported
        states = {k: "exported-reviewed" if v == "exported" else v for k, v in states.items()}
    for sample_id, state in states.items():
        if state not in STATES:
            raise ValueError(f"unknown state {state!r} of {sample_id!r}")
    maps = {}
    for key in ("positions", "by", "bases", *EXTRA_MAPS):
        maps[key] = stored.get(key, {})
        if not isinstance(maps[key], dict):
            raise ValueError(f"{key} is not a mapping")
    maps["positions"] = {k: place(v) for k, v in maps["positions"].items()}
    return {"position": position, "states": dict(states), **maps}
