"""Which training labels a semi-supervised run sees: a seeded, class-balanced choice of N examples
(``--labelled N``) or a label file (``--labelled FILE``); the others are hidden (``-1``)."""

from __future__ import annotations

import csv
import os

import torch

from ppl_vae.errors import DataError

#: Offset that separates the labelled-example choice from the split's and training's seeded streams.
_LABELLED_STREAM = 104_729

#: A label file larger than this is not a label file for data sets this size.
MAX_LABEL_FILE_BYTES = 64 * 2**20


def select_labelled(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Keep the labels of ``n`` training examples chosen at random (seeded) and balanced over the classes,
    ``n // K`` per class and one more for ``n % K`` classes drawn at random; ``-1`` everywhere else.

    Raises :class:`DataError` (one line) when ``n`` is not between the number of classes and the number
    of examples, or a class has fewer examples than its share."""
    labels = torch.as_tensor(labels).long()
    classes = int(labels.max()) + 1 if labels.numel() else 0
    if isinstance(n, bool) or not isinstance(n, int) or not classes <= n <= labels.numel():
        raise DataError(
            f"--labelled {n}: choose between {classes} (one per class) and {labels.numel()} (every training "
            "example) labelled examples"
        )
    generator = torch.Generator().manual_seed(_LABELLED_STREAM + int(seed))
    share = torch.full((classes,), n // classes, dtype=torch.long)
    share[torch.randperm(classes, generator=generator)[: n % classes]] += 1
    keep = torch.full_like(labels, -1)
    for k in range(classes):
        members = (labels == k).nonzero().flatten()
        if members.numel() < share[k]:
            raise DataError(
                f"--labelled {n}: class {k} has {members.numel()} training examples but needs {int(share[k])} "
                "for a class-balanced choice; label fewer examples"
            )
        chosen = members[torch.randperm(members.numel(), generator=generator)[: int(share[k])]]
        keep[chosen] = k
    return keep


def read_label_file(path: str, num_examples: int, num_classes: int | None = None) -> torch.Tensor:
    """Labels from a CSV file of ``index,label`` rows (``index``: 0-based position in the training split;
    an optional header ``index,label``): ``(num_examples,)`` with ``-1`` where no row gives a label.

    Raises :class:`DataError` naming the file, the row and the fix for anything else: a missing or
    oversized file, a row that is not two integers, an index out of range or repeated, a label below 0
    or (when ``num_classes`` is given) not below it."""
    if not os.path.isfile(path):
        raise DataError(f"label file {path} does not exist; give a CSV of index,label rows")
    if os.path.getsize(path) > MAX_LABEL_FILE_BYTES:
        raise DataError(f"label file {path} is larger than {MAX_LABEL_FILE_BYTES // 2**20} MiB; it is not a label file")
    keep = torch.full((num_examples,), -1, dtype=torch.long)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"label file {path} is not a text CSV file ({error}); give index,label rows") from None
    if rows and [cell.strip().lower() for cell in rows[0]] == ["index", "label"]:
        rows = rows[1:]
    for number, row in enumerate(rows, start=1):
        if not row:
            continue
        try:
            index, label = (int(cell) for cell in row)
        except ValueError:
            raise DataError(f"label file {path}, row {number}: expected two integers index,label, got {row}") from None
        if not 0 <= index < num_examples:
            raise DataError(f"label file {path}, row {number}: index {index} is outside 0..{num_examples - 1}")
        if label < 0 or (num_classes is not None and label >= num_classes):
            top = "" if num_classes is None else f"..{num_classes - 1}"
            raise DataError(f"label file {path}, row {number}: label {label} is not a class 0{top}")
        if keep[index] >= 0:
            raise DataError(f"label file {path}, row {number}: index {index} is labelled twice; keep one row")
        keep[index] = label
    if int((keep >= 0).sum()) == 0:
        raise DataError(f"label file {path} labels no example; give index,label rows")
    return keep
