"""CUB-200-2011 in its official layout, split by its own ``train_test_split.txt``.

Protocol implemented (``data.dataset: cub200``):

1. Input: ``CUB_200_2011.tgz`` extracted. ``ROOT`` is the ``CUB_200_2011/`` folder or the folder
   that holds it, with ``images.txt`` (``<image id> <path under images/>``),
   ``train_test_split.txt`` (``<image id> <1: train, 0: test>``), ``classes.txt``
   (``<class id> <class folder>``, ids 1..200) and the images under ``images/<class folder>/``.
   ``image_class_labels.txt`` (``<image id> <class id>``), when present, must agree with the
   folders.
2. Classes: the 200 of ``classes.txt``, numbered by their ids minus one (the ids follow the
   folders' sorted names, so this is also the order torchvision's ``ImageFolder`` gives them);
   a class's name is its folder (``001.Black_footed_Albatross``). An image's class is the folder
   its path names.
3. Split: the official one, 5,994 training and 5,794 test images, in image-id order. Every
   class must have at least one image on each side.
4. Tasks: the SPEC §1 permutation of the 200 classes cut into 10 tasks of 20.

The toolboxes behind the published CUB-200 numbers ship CUB as ``train/`` and ``test/`` class
folders of their own making; read those with ``data.dataset: imagefolder`` to run on exactly
their files (docs/data.md, "CUB-200").
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from sdlora.data.source import DataError, Source, file_listing

FILES = ("images.txt", "train_test_split.txt", "classes.txt")
LAYOUT = (
    "ROOT/images.txt, ROOT/train_test_split.txt, ROOT/classes.txt and the images under "
    "ROOT/images/<class folder>/ (CUB_200_2011.tgz extracted; ROOT = .../CUB_200_2011 or the "
    "folder holding it)"
)


def _error(root: Path, what: str) -> DataError:
    return DataError(f"dataset 'cub200' at {root}: {what}; expected layout: {LAYOUT}")


def find_root(root: str | Path) -> Path:
    """The ``CUB_200_2011`` folder: ``root`` itself, or its child of that name."""
    root = Path(root)
    if not root.is_dir():
        raise _error(root, "the folder does not exist")
    for candidate in (root, root / "CUB_200_2011"):
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    missing = [f for f in FILES if not (root / f).is_file()]
    raise _error(root, f"missing {', '.join(missing)}")


def read_pairs(path: Path, what: str) -> dict[int, str]:
    """``<id> <value>`` lines of one CUB list, by id; a bad or repeated id names file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cub200: cannot read {path}: {err}") from None
    pairs: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"cub200: {path}:{lineno}: expected '<id> <{what}>', got {line!r}")
        key = int(parts[0])
        if key in pairs:
            raise DataError(f"cub200: {path}:{lineno}: id {key} is listed twice")
        pairs[key] = parts[1]
    if not pairs:
        raise DataError(f"cub200: {path} is empty")
    return pairs


def _classes(folder: Path) -> list[str]:
    """Class folders by id (ids must run 1..C)."""
    classes = read_pairs(folder / "classes.txt", "class folder")
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        gaps = sorted(set(range(1, ids[-1] + 1)) - set(ids))[:10]
        raise DataError(
            f"cub200: {folder / 'classes.txt'}: class ids must run 1..C; missing {gaps}"
        )
    names = [classes[i] for i in ids]
    if len(set(names)) != len(names):
        raise DataError(f"cub200: {folder / 'classes.txt'} names a class folder twice")
    return names


def read_cub200(root: str | Path) -> Source:
    """The official CUB-200-2011 split of the module docstring."""
    folder = find_root(root)
    names = _classes(folder)
    index = {name: i for i, name in enumerate(names)}
    images = read_pairs(folder / "images.txt", "path under images/")
    split = read_pairs(folder / "train_test_split.txt", "1 or 0")
    if set(images) != set(split):
        only = sorted(set(images) ^ set(split))[:10]
        raise DataError(
            f"cub200: images.txt and train_test_split.txt list different image ids, e.g. {only}"
        )
    labels_file = folder / "image_class_labels.txt"
    labels = read_pairs(labels_file, "class id") if labels_file.is_file() else None
    sides: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for image_id in sorted(images):
        path = images[image_id]
        parts = PurePosixPath(path).parts
        if len(parts) != 2 or parts[0] not in index:
            raise DataError(
                f"cub200: images.txt: image {image_id} is {path!r}; expected "
                "'<class folder>/<file>' with a class folder of classes.txt"
            )
        class_id = index[parts[0]]
        if labels is not None and labels.get(image_id) != str(class_id + 1):
            raise DataError(
                f"cub200: image_class_labels.txt gives image {image_id} class "
                f"{labels.get(image_id)} but its folder {parts[0]!r} is class {class_id + 1}"
            )
        flag = split[image_id]
        if flag not in ("0", "1"):
            raise DataError(
                f"cub200: train_test_split.txt: image {image_id} is marked {flag!r}; expected 1 "
                "(train) or 0 (test)"
            )
        paths, ids = sides["train" if flag == "1" else "test"]
        paths.append(f"images/{path}")
        ids.append(class_id)
    for side, (_, ids) in sides.items():
        empty = sorted(set(range(len(names))) - set(ids))
        if empty:
            raise DataError(
                f"cub200: {len(empty)} class(es) have no {side} image, e.g. "
                f"{[names[i] for i in empty[:3]]}"
            )
    return Source(
        dataset="cub200",
        root=str(folder.resolve()),
        layout="official lists (images.txt, train_test_split.txt, classes.txt)",
        class_names=tuple(names),
        train=file_listing(folder, *sides["train"]),
        test=file_listing(folder, *sides["test"]),
    )
