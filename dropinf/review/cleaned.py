"""A cleaned dataset from the decisions: an ``.npz``, a relabel manifest, a relabelled folder copy.

``cleaned_npz_bytes`` writes the training split with the relabels applied and the removed rows
dropped, the test split untouched, in the arrays ``dropinf.data`` reads (``x``, ``y``,
``class_names``, ``x_test``, ``y_test``, ``ids``, ``ids_test``, ``layout``), so
``python -m dropinf train --data cleaned.npz`` accepts it. For an image folder,
``relabel_manifest`` lists each changed file (path, old label, new label, action) and
``copy_cleaned_folder`` writes a copy in which every kept training file sits in the folder of
its label after the fixes; the analyst's folder is only read, and nothing is ever deleted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from dropinf.data import DatasetBundle, parse_spec
from dropinf.errors import ConfigError
from dropinf.review.decisions import Decision, fixes_from_decisions

MANIFEST_COLUMNS = ("path", "old_label", "new_label", "action")


def cleaned_bundle(bundle: DatasetBundle, decisions: Mapping[int, Decision]) -> DatasetBundle:
    """The bundle with the decisions applied (``DatasetBundle.with_fixes``).

    Raises:
        DatasetError: A decision points outside the training split or at an unknown class.
    """
    removals, relabels = fixes_from_decisions(decisions, bundle.train.labels.numpy())
    return bundle.with_fixes(removals, relabels)


def cleaned_npz_bytes(bundle: DatasetBundle, decisions: Mapping[int, Decision]) -> bytes:
    """The cleaned dataset as ``.npz`` bytes that ``dropinf.data.load_data`` reads back.

    Inputs are stored as float32 as the model sees them (already scaled, so the loader leaves
    them as they are); signals keep ``layout="signals"``.

    Args:
        bundle: The dataset as loaded (labels as given, noise included).
        decisions: Training index -> decision.

    Returns:
        The archive's bytes.

    Raises:
        DatasetError: A decision points outside the training split or at an unknown class.
    """
    fixed = cleaned_bundle(bundle, decisions)
    arrays = {
        "x": fixed.train.inputs.numpy().astype(np.float32),
        "y": fixed.train.labels.numpy().astype(np.int64),
        "class_names": np.array(fixed.class_names, dtype=str),
        "x_test": fixed.test.inputs.numpy().astype(np.float32),
        "y_test": fixed.test.labels.numpy().astype(np.int64),
        "layout": np.array("signals" if len(fixed.input_shape) == 2 else "images"),
    }
    if fixed.train_ids is not None:
        arrays["ids"] = np.array(fixed.train_ids, dtype=str)
    if fixed.test_ids is not None and fixed.train_ids is not None:
        arrays["ids_test"] = np.array(fixed.test_ids, dtype=str)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def relabel_manifest(bundle: DatasetBundle, decisions: Mapping[int, Decision]) -> bytes:
    """CSV of the files the decisions change: ``path, old_label, new_label, action``.

    One row per removed or relabelled training example (by index); labels are class names.
    ``keep`` and relabels to the given label change nothing and are left out.

    Raises:
        ConfigError: The dataset names no examples (no paths to list).
    """
    ids = _train_ids(bundle)
    labels = bundle.train.labels.numpy()
    removals, relabels = fixes_from_decisions(decisions, labels)
    rows = [(i, "remove", None) for i in removals] + [
        (i, "relabel", label) for i, label in relabels.items()
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MANIFEST_COLUMNS)
    for index, action, label in sorted(rows):
        new = "" if label is None else bundle.class_name(label)
        writer.writerow([ids[index], bundle.class_name(labels[index]), new, action])
    return buffer.getvalue().encode()


def copy_cleaned_folder(
    bundle: DatasetBundle, decisions: Mapping[int, Decision], exports: Path
) -> Path:
    """Copy an image folder with each kept training file in the folder of its fixed label.

    The copy goes to ``exports/<folder name>-cleaned-<digest of the fixes>``; the same fixes
    give the same folder, which is then reused as it is. Removed files are not copied; test
    files keep their place. The source folder is only read.

    Args:
        bundle: A dataset loaded from an image folder.
        decisions: Training index -> decision.
        exports: dropinf's folder for exports (created if missing).

    Returns:
        The folder of the copy.

    Raises:
        ConfigError: The dataset is not an image folder.
        DatasetError: A decision points outside the training split or at an unknown class.
    """
    source = _source_folder(bundle)
    fixed = cleaned_bundle(bundle, decisions)
    digest = hashlib.sha256(relabel_manifest(bundle, decisions)).hexdigest()[:12]
    target = Path(exports) / f"{source.name}-cleaned-{digest}"
    if target.is_dir():
        return target
    staging = Path(exports) / f".{target.name}.partial"
    if staging.exists():
        raise ConfigError(f"expected no unfinished copy at {staging}; found one (remove it)")
    plan = _copy_plan(fixed)
    for relative, destination in plan:
        (staging / destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, staging / destination)
    staging.rename(target)
    return target


def _copy_plan(fixed: DatasetBundle) -> list[tuple[str, PurePosixPath]]:
    """(source path, destination path) of every file of the fixed bundle, both relative."""
    plan = []
    labels = fixed.train.labels.numpy()
    for path, label in zip(_train_ids(fixed), labels, strict=True):
        plan.append((path, _in_class_folder(PurePosixPath(path), fixed.class_names[int(label)])))
    plan += [(path, PurePosixPath(path)) for path in fixed.test_ids or ()]
    return _without_clashes(plan)


def _in_class_folder(path: PurePosixPath, class_name: str) -> PurePosixPath:
    """``train/cat/1.png`` -> ``train/<class>/1.png``; ``cat/1.png`` -> ``<class>/1.png``."""
    return path.parent.parent / class_name / path.name


def _without_clashes(
    plan: list[tuple[str, PurePosixPath]],
) -> list[tuple[str, PurePosixPath]]:
    """Rename a moved file whose name is taken: ``1.png`` from ``cat`` -> ``1.from-cat.png``.

    Files that stay in place are placed first, so only moved files are ever renamed.
    """
    taken: set[PurePosixPath] = set()
    renamed = []
    for source, destination in sorted(plan, key=lambda row: PurePosixPath(row[0]) != row[1]):
        if destination in taken:
            origin = PurePosixPath(source).parent.name
            destination = destination.with_name(
                f"{destination.stem}.from-{origin}{destination.suffix}"
            )
        taken.add(destination)
        renamed.append((source, destination))
    return renamed


def _source_folder(bundle: DatasetBundle) -> Path:
    source = Path(parse_spec(bundle.spec)[0]).expanduser()
    if not source.is_dir() or bundle.train_ids is None:
        raise ConfigError(
            f"expected a dataset read from an image folder; {bundle.spec!r} is not one"
        )
    return source


def _train_ids(bundle: DatasetBundle) -> tuple[str, ...]:
    if bundle.train_ids is None:
        raise ConfigError(
            f"expected a dataset naming its examples (ids or file paths); "
            f"{bundle.name!r} names none"
        )
    return bundle.train_ids
