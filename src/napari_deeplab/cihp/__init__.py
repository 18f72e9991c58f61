"""The CIHP dataset: its label set, its layout on disk, and the one commit protocol every
writer uses. ``from napari_deeplab import cihp`` gives the public API of the package's modules:

- :mod:`.labels`: class names, palette, left/right pairs and their swap table;
- :mod:`.layout`: splits, the sample id rule, paths, the photo lookup, :func:`locate`;
- :mod:`.png`: the label PNG encoder;
- :mod:`.instances`: part instances from parts x people (``Instance_ids`` and its table);
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
from .instances import (
    MAX_PEOPLE_CIHP_NUMBERING,
    Instance,
    format_instance_table,
    parse_instance_table,
    part_instances,
)
from .labels import (
    CLASS_NAMES,
    HUMAN_COLOURS,
    INSTANCE_COLOURS,
    LEFT_RIGHT_PAIRS,
    LEFT_RIGHT_SWAP,
    NUM_CLASSES,
    PALETTE,
    colorize,
    colorize_humans,
)
from .layout import (
    INSTANCE_TABLE,
    MAX_ID_BYTES,
    MAX_SUFFIX_LENGTH,
    PEOPLE_FOLDERS,
    PHOTO_SUFFIXES,
    SAMPLE_FOLDERS,
    SPLIT_ID_FILES,
    WRITERS_FOLDER,
    DatasetError,
    Location,
    check_sample_id,
    check_split,
    id_list_path,
    locate,
    normal_id,
    photos_of,
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
    "INSTANCE_COLOURS",
    "INSTANCE_TABLE",
    "JOURNAL_NAME",
    "LEFT_RIGHT_PAIRS",
    "LEFT_RIGHT_SWAP",
    "LOCK_NAME",
    "MAX_ID_BYTES",
    "MAX_PEOPLE_CIHP_NUMBERING",
    "MAX_SUFFIX_LENGTH",
    "NUM_CLASSES",
    "PALETTE",
    "PEOPLE_FOLDERS",
    "PHOTO_SUFFIXES",
    "SAMPLE_FOLDERS",
    "SCORES_FILE",
    "SCORES_VERSION",
    "SPLIT_ID_FILES",
    "WRITERS_FOLDER",
    "WRITER_KEYS",
    "DatasetError",
    "Instance",
    "Location",
    "Sample",
    "SampleChangedError",
    "SampleExistsError",
    "StagedSample",
    "add_to_id_list",
    "annotator_name",
    "check_sample_id",
    "check_split",
    "colorize",
    "colorize_humans",
    "commit_samples",
    "find_image",
    "format_instance_table",
    "id_list_path",
    "list_samples",
    "locate",
    "normal_id",
    "parse_instance_table",
    "part_instances",
    "photos_of",
    "ranked",
    "read_id_list",
    "read_sample",
    "read_scores",
    "record_scores",
    "recover",
    "remove_sample",
    "sample_exists",
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
