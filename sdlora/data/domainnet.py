"""DomainNet as a class-incremental benchmark: the protocol of the pre-trained-model CL toolboxes.

Protocol implemented (``data.dataset: domainnet``):

1. Input: the official DomainNet release (Peng et al., ICCV 2019; the "cleaned" version) as it
   is downloaded: ``ROOT/{domain}_train.txt`` and ``ROOT/{domain}_test.txt`` for each domain,
   and the extracted image folders ``ROOT/{domain}/{class}/{file}.jpg``. Each list line is
   ``{domain}/{class}/{file}.jpg {label}`` with the path relative to ROOT.
2. Domains: ``data.domains``, by default all six (clipart, infograph, painting, quickdraw, real,
   sketch). The train set is the concatenation of the domains' ``_train.txt`` lists, the test
   set that of their ``_test.txt`` lists, in that domain order and file order; the domain is not
   a label and no task is tied to a domain (images of one class from every domain share it).
3. Classes: all 345, numbered by the lists' own labels (0..344, which the release assigns in
   alphabetical order of the class folders); the name of a class is the folder that holds its
   images. Every label must name exactly one folder and every folder one label, across all
   lists, and labels must run 0..C-1 with none missing; otherwise the prepare stage stops.
4. Tasks: the class order of SPEC §1 (``np.random.seed(seed); np.random.permutation(345)``)
   cut into 5 tasks of 69 classes (``init_cls: 69``, ``increment: 69``); a task's train and test
   sets hold every image of its classes from every selected domain.
5. Images are stored byte for byte (JPEG). A file a list names but that is missing or does not
   decode is an error naming it, or with ``skip_corrupt: true`` a skipped, counted row.

This matches the DomainNet loaders of the PILOT/InfLoRA-derived code (lists read line by line,
``class_order = np.arange(345)``, 69 classes per task, the SPEC §1 permutation on top). The
InfLoRA repository itself reads pre-computed YAML split files instead of the official lists, and
some toolboxes keep only the 200 largest classes; results are comparable only on the same lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sdlora.config import DOMAINNET_DOMAINS
from sdlora.data.source import DataError, Source, file_listing

LAYOUT = (
    "ROOT/{domain}_train.txt and ROOT/{domain}_test.txt for each domain (lines "
    "'{domain}/{class}/{file}.jpg {label}') with the images under ROOT/{domain}/{class}/"
)


def read_list(list_file: Path) -> tuple[list[str], list[int]]:
    """Paths and labels of one ``{domain}_{split}.txt`` list; malformed lines name file:line."""
    paths: list[str] = []
    labels: list[int] = []
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"domainnet: cannot read list file {list_file}: {err}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(
                f"domainnet: {list_file}:{lineno}: expected '<path> <label>', got {line.strip()!r}"
            )
        if len(PurePosixPath(parts[0]).parts) < 2:
            raise DataError(
                f"domainnet: {list_file}:{lineno}: path {parts[0]!r} has no class folder "
                "(expected {domain}/{class}/{file})"
            )
        paths.append(parts[0])
        labels.append(int(parts[1]))
    return paths, labels


def read_domainnet(root: str | Path, domains: Sequence[str] = DOMAINNET_DOMAINS) -> Source:
    """The merged class-incremental DomainNet of the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset 'domainnet' at {root}: the folder does not exist; expected {LAYOUT}"
        )
    if not domains:
        raise DataError("data.domains: name at least one DomainNet domain")
    lists = {s: [root / f"{d}_{s}.txt" for d in domains] for s in ("train", "test")}
    missing = [str(p) for s in ("train", "test") for p in lists[s] if not p.is_file()]
    if missing:
        raise DataError(
            f"dataset 'domainnet' at {root}: missing list file(s) {missing[:6]}; expected {LAYOUT}"
        )
    split: dict[str, tuple[list[str], list[int]]] = {}
    name_of: dict[int, tuple[str, str]] = {}  # label -> (class folder, where first seen)
    label_of: dict[str, int] = {}
    for s in ("train", "test"):
        paths: list[str] = []
        labels: list[int] = []
        for list_file in lists[s]:
            p, lab = read_list(list_file)
            for path, label in zip(p, lab, strict=True):
                name = PurePosixPath(path).parent.name
                seen = name_of.setdefault(label, (name, list_file.name))
                if seen[0] != name:
                    raise DataError(
                        f"domainnet: label {label} names class folder {seen[0]!r} in {seen[1]} "
                        f"but {name!r} in {list_file.name} ({path})"
                    )
                if label_of.setdefault(name, label) != label:
                    raise DataError(
                        f"domainnet: class folder {name!r} has labels {label_of[name]} and "
                        f"{label} ({list_file.name}: {path})"
                    )
            paths += p
            labels += lab
        split[s] = (paths, labels)
    if not name_of:
        raise DataError(f"dataset 'domainnet' at {root}: the list files are empty")
    num = max(name_of) + 1
    gaps = sorted(set(range(num)) - set(name_of))
    if gaps:
        raise DataError(
            f"domainnet: labels must run 0..{num - 1} but {len(gaps)} never occur in the lists "
            f"of domains {list(domains)}: {gaps[:10]}"
        )
    return Source(
        dataset="domainnet",
        root=str(root.resolve()),
        layout=f"official lists, domains {list(domains)}",
        class_names=tuple(name_of[i][0] for i in range(num)),
        train=file_listing(root, *split["train"]),
        test=file_listing(root, *split["test"]),
    )
