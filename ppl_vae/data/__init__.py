"""Data: the train/held-out split, the image and table sources (the embedded digits, MNIST-family
files, CIFAR-10 binary batches, npz archives, image folders, CSV/npz tables), binarization, support
checks and fingerprints.

:func:`load_dataset` is the entry point; the submodules are ``split``, ``sources``, ``npz``, ``cifar``,
``colour``, ``support`` and ``tables``.
"""

from ppl_vae.data.cifar import CIFAR10_FOLDER, load_cifar10
from ppl_vae.data.colour import luma, luma_8bit
from ppl_vae.data.labels import read_label_file, select_labelled
from ppl_vae.data.npz import check_npz_members, one_line, open_npz, read_npz_member, require_file
from ppl_vae.data.sources import (
    DATASETS,
    DEFAULT_ROOT,
    IMAGE_EXTENSIONS,
    SPEC_PREFIXES,
    PathLike,
    data_fingerprint,
    load_dataset,
)
from ppl_vae.data.split import DataSplit, split_examples
from ppl_vae.data.support import BINARIZE_MODES, binarize, check_data_support

__all__ = [
    "DataSplit",
    "split_examples",
    "DATASETS",
    "SPEC_PREFIXES",
    "IMAGE_EXTENSIONS",
    "DEFAULT_ROOT",
    "PathLike",
    "load_dataset",
    "load_cifar10",
    "CIFAR10_FOLDER",
    "luma",
    "luma_8bit",
    "open_npz",
    "check_npz_members",
    "read_npz_member",
    "require_file",
    "one_line",
    "BINARIZE_MODES",
    "binarize",
    "data_fingerprint",
    "check_data_support",
    "select_labelled",
    "read_label_file",
]
