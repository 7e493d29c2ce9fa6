"""Dataset loaders and the versioned label mapping.

Every loader returns :class:`Dataset`: the images kept, each with a label in
``ml.data.labels.CLASSES``, a patient key (for patient-level splits) and its data
source, plus a count of every row left out and why. Nothing here downloads
anything; the data must already be on disk (README, "Data").

Layouts:

* ``covid-chestxray`` - ieee8023 ``metadata.csv`` + ``images/``
* ``pediatric`` - Kermany ``{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``
* ``nih`` - ``labels.csv`` (filename, patient_id, label, view, source, ...) + ``images/``
  (the adult NIH ChestX-ray14 sets in ``../shared/datasets/adult-normal`` and
  ``adult-pneumonia``: one source, ``nih-cxr14``, with two classes)
* ``generic`` - a folder per class (``covid19/``, ``pneumonia/``, ``normal/``),
  or a CSV with ``path,label[,patient][,source]`` columns
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml.data.labels import CLASSES

log = logging.getLogger(__name__)

LABEL_MAPPING_VERSION = "1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

# --- label mapping, version 1 -------------------------------------------------
# covid-chestxray `finding` values are free text; several may be combined with
# ", " or (newer upstream) "/". Rules, in order:
#   1. any part is "COVID-19"                        -> covid19
#   2. the whole finding is "No Finding"             -> normal
#   3. any part names an infectious pneumonia        -> pneumonia
#   4. only non-infectious findings (ARDS, lipoid)   -> excluded: they are not pneumonias
#   5. "todo" (upstream: not yet labelled)           -> excluded
#   6. anything else                                 -> excluded as unknown, by name
INFECTIOUS_PNEUMONIA = {
    "pneumonia",
    "bacterial",
    "viral",
    "fungal",
    "sars",
    "mers",
    "mers-cov",
    "influenza",
    "varicella",
    "pneumocystis",
    "streptococcus",
    "klebsiella",
    "e.coli",
    "legionella",
    "mycoplasma bacterial pneumonia",
    "mycoplasma",
    "chlamydophila",
    "staphylococcus",
    "aspergillosis",
    "nocardia",
    "herpes",
    "tuberculosis",
}
NON_INFECTIOUS = {"ards", "lipoid"}
FRONTAL_VIEWS = {"PA", "AP", "AP Supine", "AP Erect"}


class MappingExclusion(Exception):  # noqa: N818 - an outcome, not an error
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def map_covid_finding(finding: str) -> str:
    """Map a covid-chestxray ``finding`` to a class, or raise MappingExclusion(reason)."""
    text = finding.strip()
    parts = [p.strip().lower() for p in re.split(r"[,/]", text) if p.strip()]
    if "covid-19" in parts:
        return "covid19"
    if text.lower() == "no finding":
        return "normal"
    if any(p in INFECTIOUS_PNEUMONIA for p in parts):
        return "pneumonia"
    if parts and all(p in NON_INFECTIOUS for p in parts):
        return _exclude("non-infectious finding (ARDS, lipoid)")
    if text.lower() == "todo":
        return _exclude("finding not labelled upstream (todo)")
    return _exclude(f"unknown finding: {text or '(empty)'}")


def _exclude(reason: str) -> str:
    raise MappingExclusion(reason)


# --- records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    patient: str
    source: str
    view: str = ""
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Stable identity of the image within its source (for hashes and reports)."""
        return f"{self.source}/{self.path.name}"

    @property
    def keys(self) -> tuple[str, ...]:
        """This image's key and the key older split files gave it.

        Until the NIH sets became one source (``nih-cxr14``), keys were named by folder
        (``adult-normal/...``); the bundled v1 model's ``splits.csv`` uses those.
        """
        folder = self.path.parent.parent.name if self.path.parent.name == "images" else ""
        legacy = f"{folder}/{self.path.name}" if folder else self.key
        return (self.key, legacy) if legacy != self.key else (self.key,)


@dataclass
class Dataset:
    records: list[Record]
    excluded: Counter[str] = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)

    def __add__(self, other: Dataset) -> Dataset:
        return Dataset(
            records=self.records + other.records,
            excluded=self.excluded + other.excluded,
            sources=list(dict.fromkeys(self.sources + other.sources)),
        )

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for record in self.records:
            table.setdefault(record.source, Counter())[record.label] += 1
        return {src: {c: int(counter[c]) for c in CLASSES} for src, counter in table.items()}

    def content_hash(self) -> str:
        """Hash of (image key, label, patient) for every record: names a data snapshot."""
        rows = sorted((r.key, r.label, r.patient) for r in self.records)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def summary(self) -> dict[str, object]:
        return {
            "label_mapping_version": LABEL_MAPPING_VERSION,
            "sources": self.sources,
            "images": len(self.records),
            "patients": len({r.patient for r in self.records}),
            "per_source": self.counts(),
            "excluded": dict(sorted(self.excluded.items())),
            "content_hash": self.content_hash(),
        }


# Patients entered twice under two ids (the same films under other names), found by
# ``ml.research.split_leak`` and confirmed by eye; merged before any split is drawn.
PATIENT_ALIASES = Path(__file__).with_name("patient_aliases.csv")


def patient_aliases(source: str, path: Path = PATIENT_ALIASES) -> list[tuple[str, str]]:
    """The (patient, patient) pairs of ``source`` that are one person."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            (row["patient_a"].strip(), row["patient_b"].strip())
            for row in csv.DictReader(fh)
            if row["source"].strip() == source
        ]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# --- loaders -----------------------------------------------------------------------


def load_covid_chestxray(root: Path, source: str = "covid-chestxray") -> Dataset:
    """ieee8023 layout. Rows naming the same image file are one image, and their
    patient ids are merged into one patient (upstream entered some cases twice); so are
    the patients of :data:`PATIENT_ALIASES` (the same films under other file names)."""
    root = Path(root)
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} not found: not a covid-chestxray layout.")
    excluded: Counter[str] = Counter()
    kept: dict[str, tuple[dict[str, str], str]] = {}
    patients = _UnionFind()
    with metadata.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            modality = (row.get("modality") or "").strip()
            view = (row.get("view") or "").strip()
            filename = (row.get("filename") or "").strip()
            patient = f"cc-{(row.get('patientid') or '').strip()}"
            if modality != "X-ray":
                excluded[f"modality {modality or '(empty)'} (not X-ray)"] += 1
                continue
            if view not in FRONTAL_VIEWS:
                excluded[f"view {view or '(empty)'} (not frontal)"] += 1
                continue
            try:
                label = map_covid_finding(row.get("finding") or "")
            except MappingExclusion as exc:
                excluded[exc.reason] += 1
                continue
            folder = (row.get("folder") or "images").strip() or "images"
            if not (root / folder / filename).is_file():
                excluded["image file missing"] += 1
                continue
            if filename in kept:
                excluded["duplicate row for an image already kept"] += 1
                patients.union(kept[filename][0]["_patient"], patient)
                continue
            row["_patient"] = patient
            row["_folder"] = folder
            kept[filename] = (row, label)
    for a, b in patient_aliases(source):
        patients.union(a, b)
    records = [
        Record(
            path=root / row["_folder"] / filename,
            label=label,
            patient=patients.find(row["_patient"]),
            source=source,
            view=row["view"].strip(),
            meta=(("finding", row["finding"].strip()),),
        )
        for filename, (row, label) in kept.items()
    ]
    return Dataset(records=records, excluded=excluded, sources=[source])


_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+$", re.IGNORECASE)
_IM = re.compile(r"^(NORMAL2-)?IM-(\d+)-\d+$", re.IGNORECASE)


def pediatric_patient(stem: str) -> tuple[str, str]:
    """(patient key, pneumonia subtype) from a Kermany file name."""
    if match := _PERSON.match(stem):
        return f"ped-{match.group(1).lower()}", match.group(2).lower()
    if match := _IM.match(stem):
        prefix = "n2-" if match.group(1) else ""
        return f"ped-{prefix}im-{match.group(2)}", ""
    return f"ped-file-{stem}", ""


def load_pediatric(root: Path, source: str = "pediatric-pneumonia") -> Dataset:
    """Kermany layout. The upstream train/test split is recorded in ``meta`` but
    not used: the platform makes its own patient-level split."""
    root = Path(root)
    excluded: Counter[str] = Counter()
    records = []
    found_any = False
    for split in ("train", "val", "test"):
        for folder, label in (("NORMAL", "normal"), ("PNEUMONIA", "pneumonia")):
            directory = root / split / folder
            if not directory.is_dir():
                continue
            found_any = True
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    excluded["not an image file"] += 1
                    continue
                patient, subtype = pediatric_patient(path.stem)
                records.append(
                    Record(
                        path=path,
                        label=label,
                        patient=patient,
                        source=source,
                        view="AP",
                        meta=(("upstream_split", split), ("subtype", subtype)),
                    )
                )
    if not found_any:
        raise FileNotFoundError(f"{root} has no {{train,test}}/{{NORMAL,PNEUMONIA}} folders.")
    return Dataset(records=records, excluded=excluded, sources=[source])


def _row_problem(label: str, path: Path, view: str | None = None) -> str | None:
    """Why a labelled CSV row cannot be used, or None (shared by the CSV layouts)."""
    if label not in CLASSES:
        return f"unknown label: {label or '(empty)'}"
    if view is not None and view not in FRONTAL_VIEWS:
        return "view not frontal"
    if not path.is_file():
        return "image file missing"
    return None


NIH_SOURCE = "nih-cxr14"


def nih_row_source(row: dict[str, str], default: str) -> str:
    """The data source of one NIH ``labels.csv`` row.

    Both NIH folders (normal and pneumonia) are exports of ChestX-ray14 from one
    hospital: they are one source with two classes in per-source metrics, whatever
    folder they came from. The ``source`` column names the origin per row.
    """
    described = (row.get("source") or "").strip()
    if described.startswith("NIH ChestX-ray14"):
        return NIH_SOURCE
    return default


def load_nih(root: Path, source: str = NIH_SOURCE) -> Dataset:
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: not an NIH labels.csv layout.")
    excluded: Counter[str] = Counter()
    records = []
    with labels.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = root / "images" / row["filename"]
            label = (row.get("label") or "").strip()
            problem = _row_problem(label, path, view=(row.get("view") or "").strip())
            if problem:
                excluded[problem] += 1
                continue
            records.append(
                Record(
                    path=path,
                    label=label,
                    patient=(row.get("patient_id") or path.stem).strip(),
                    source=nih_row_source(row, source),
                    view=row["view"].strip(),
                )
            )
    sources = sorted({r.source for r in records}) or [source]
    return Dataset(records=records, excluded=excluded, sources=sources)


def load_generic(root: Path, source: str | None = None) -> Dataset:
    """A folder per class, or a CSV (``path,label[,patient][,source][,split]``).

    ``root`` may be the CSV itself or a folder holding ``labels.csv``. Without a
    patient column each image counts as its own patient: say so in reports. A
    ``split`` column (train, val or test; the platform's dataset exports write one)
    is kept in each record's ``meta``; ``given_splits`` reads it back.
    """
    root = Path(root)
    csv_path = root if root.suffix == ".csv" else root / "labels.csv"
    source = source or (root.stem if root.suffix == ".csv" else root.name)
    excluded: Counter[str] = Counter()
    records = []
    if csv_path.is_file():
        base = csv_path.parent
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"path", "label"} <= set(reader.fieldnames or []):
                raise ValueError(f"{csv_path} needs at least the columns path,label.")
            for row in reader:
                label = (row.get("label") or "").strip()
                path = base / row["path"].strip()
                problem = _row_problem(label, path)
                if problem:
                    excluded[problem] += 1
                    continue
                split = (row.get("split") or "").strip()
                if split and split not in GIVEN_SPLITS:
                    raise ValueError(
                        f"{csv_path}: split {split!r} for {row['path']}; use train, val or test."
                    )
                records.append(
                    Record(
                        path=path,
                        label=label,
                        patient=(row.get("patient") or "").strip() or f"img-{path.name}",
                        source=(row.get("source") or "").strip() or source,
                        meta=(("split", split),) if split else (),
                    )
                )
        return Dataset(records=records, excluded=excluded, sources=[source])
    class_dirs = [root / name for name in CLASSES if (root / name).is_dir()]
    if not class_dirs:
        raise FileNotFoundError(
            f"{root}: no labels.csv and no class folders ({', '.join(CLASSES)})."
        )
    for directory in class_dirs:
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                excluded["not an image file"] += 1
                continue
            records.append(
                Record(path=path, label=directory.name, patient=f"img-{path.name}", source=source)
            )
    return Dataset(records=records, excluded=excluded, sources=[source])


GIVEN_SPLITS = ("train", "val", "test")


def given_splits(records: Sequence[Record]) -> list[str] | None:
    """The split each record was given (a generic CSV's ``split`` column), or None when
    none was. Some records with a split and some without is an error: the frozen split
    of a dataset snapshot must not be mixed with a computed one."""
    splits = [dict(r.meta).get("split", "") for r in records]
    if not any(splits):
        return None
    missing = sum(1 for s in splits if not s)
    if missing:
        raise ValueError(
            f"{missing} of {len(splits)} images have no split while the others have one; "
            "give every image a split (train, val, test) or none."
        )
    return splits


LOADERS = {
    "covid-chestxray": load_covid_chestxray,
    "pediatric": load_pediatric,
    "nih": load_nih,
    "generic": load_generic,
}


def detect_layout(root: Path) -> str:
    root = Path(root)
    if (root / "metadata.csv").is_file():
        return "covid-chestxray"
    if any((root / split / "NORMAL").is_dir() for split in ("train", "test")):
        return "pediatric"
    labels = root / "labels.csv"
    if labels.is_file():
        with labels.open(newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        return "nih" if "patient_id" in header and "filename" in header else "generic"
    return "generic"


def load_dataset(root: Path, layout: str = "auto") -> Dataset:
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LOADERS:
        raise ValueError(f"Unknown layout {layout!r}; choose from {sorted(LOADERS)} or auto.")
    dataset = LOADERS[layout](Path(root))
    log.info(
        "%s (%s): %d images kept, %d rows excluded",
        root,
        layout,
        len(dataset.records),
        sum(dataset.excluded.values()),
    )
    return dataset


def load_many(roots: Iterable[Path], layout: str = "auto") -> Dataset:
    datasets: Sequence[Dataset] = [load_dataset(Path(r), layout) for r in roots]
    if not datasets:
        raise ValueError("No data folders given.")
    total = datasets[0]
    for extra in datasets[1:]:
        total = total + extra
    return total
