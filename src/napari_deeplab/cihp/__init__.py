"""The CIHP dataset: its label set, its layout on disk, and the one commit protocol every
writer uses. ``from napari_deeplab import cihp`` gives the public API of the package's modules:

- :mod:`.labels`: class names, palette, left/right pairs and their swap table;
- :mod:`.layout`: splits, the sample id rule, paths, the photo lookup, :func:`locate`;
- :mod:`.png`: the label PNG encoder;
- :mod:`.stored_photos`: the formats ``Images/`` holds, the photo a mask-only write needs;
- :mod:`.commit`: the lock, the journal and recovery, :func:`commit_samples`;
- :mod:`.samples`: listing, reading, staging, writing and removing samples, their versions;
- :mod:`.scores`: the per-sample uncertainty scores file, merged under the commit lock.

Each module imports only those listed above it.
"""

from .commit import (
    ANY_VERSION,
    JOURNAL_NAME,
    LOCK_NAME,
    WRITER_KEYS,
    SampleChangedError,
    SampleExistsError,
    add_to_id_list,
    commit_samples,
    recover,
)
from .labels import (
    CLASS_NAMES,
    HUMAN_COLOURS,
    LEFT_RIGHT_PAIRS,
    LEFT_RIGHT_SWAP,
    NUM_CLASSES,
    PALETTE,
    colorize,
    colorize_humans,
)
from .layout import (
    MAX_ID_BYTES,
    MAX_SUFFIX_LENGTH,
    PHOTO_SUFFIXES,
    SAMPLE_FOLDERS,
    SPLIT_ID_FILES,
    WRITERS_FOLDER,
    DatasetError,
    Location,
    check_new_sample_id,
    check_sample_id,
    check_split,
    file_order_key,
    id_list_path,
    locate,
    normal_id,
    photos_of,
    sample_id_from_stem,
    sample_id_of_file,
    sample_paths,
    split_folder,
)
from .png import save_label_png, save_rgb_png
from .samples import (
    ANNOTATOR_ENV,
    Sample,
    StagedSample,
    annotator_name,
    find_image,
    list_samples,
    read_id_list,
    read_sample,
    remove_sample,
    sample_exists,
    sample_version,
    sample_writer,
    stage_sample,
    write_sample,
)
from .scores import (
    SCORES_FILE,
    SCORES_VERSION,
    ranked,
    read_scores,
    record_scores,
    scores_path,
)

__all__ = [
    "ANNOTATOR_ENV",
    "ANY_VERSION",
    "CLASS_NAMES",
    "HUMAN_COLOURS",
    "JOURNAL_NAME",
    "LEFT_RIGHT_PAIRS",
    "LEFT_RIGHT_SWAP",
    "LOCK_NAME",
    "MAX_ID_BYTES",
    "MAX_SUFFIX_LENGTH",
    "NUM_CLASSES",
    "PALETTE",
    "PHOTO_SUFFIXES",
    "SAMPLE_FOLDERS",
    "SCORES_FILE",
    "SCORES_VERSION",
    "SPLIT_ID_FILES",
    "WRITERS_FOLDER",
    "WRITER_KEYS",
    "DatasetError",
    "Location",
    "Sample",
    "SampleChangedError",
    "SampleExistsError",
    "StagedSample",
    "add_to_id_list",
    "annotator_name",
    "check_new_sample_id",
    "check_sample_id",
    "check_split",
    "colorize",
    "colorize_humans",
    "commit_samples",
    "file_order_key",
    "find_image",
    "id_list_path",
    "list_samples",
    "locate",
    "normal_id",
    "photos_of",
    "ranked",
    "read_id_list",
    "read_sample",
    "read_scores",
    "record_scores",
    "recover",
    "remove_sample",
    "sample_exists",
    "sample_id_from_stem",
    "sample_id_of_file",
    "sample_paths",
    "sample_version",
    "sample_writer",
    "save_label_png",
    "save_rgb_png",
    "scores_path",
    "split_folder",
    "stage_sample",
    "write_sample",
]
