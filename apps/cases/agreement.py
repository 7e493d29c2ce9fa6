"""Reader agreement statistics for the model admins' page and its CSV.

Every kappa comes from statsmodels (``cohens_kappa`` on a contingency table,
``fleiss_kappa`` on a subjects x categories count table) and every interval from
``scipy.stats.bootstrap`` (percentile method, images resampled with replacement,
a fixed seed so the page shows the same numbers for the same data). The
categories are the three classes and "unusable"; agreement with the model
leaves out the reader's "unusable" verdicts, a class the model does not have.

Fleiss' kappa needs the same number of readers per image: it is computed over the
images read by the most common number m >= 2 of readers (the page says which m and
how many images), so images with a third reading are not mixed with the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from django.conf import settings

from apps.cases.labelling import current_policy
from apps.cases.models import LABEL_CHOICES, VERDICT_CHOICES, Adjudication, ExpertLabel, Prediction

CATEGORIES = [value for value, _ in VERDICT_CHOICES]
CLASSES = [value for value, _ in LABEL_CHOICES]
DISPLAY = dict(VERDICT_CHOICES)
CONFIDENCE = 0.95
SEED = 20240518


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval; None where it is undefined
    (too few images, or every reading in one category)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, value: float, low: float, high: float) -> Estimate:
        def clean(x: float) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        return cls(clean(value), clean(low), clean(high))


@dataclass(frozen=True)
class Comparison:
    """Two sets of labels on the same n images: proportion agreeing and Cohen's kappa."""

    n: int
    agreement: Estimate
    kappa: Estimate


@dataclass(frozen=True)
class PairRow:
    reader_a: str
    reader_b: str
    comparison: Comparison


@dataclass(frozen=True)
class ClassRow:
    label: str
    display: str
    readings: int
    images_named: int  # images read by >= 2 readers where at least one gave this label
    images_unanimous: int  # ... and every reader gave it
    kappa: Estimate  # one-vs-rest Fleiss' kappa over the Fleiss subset


@dataclass(frozen=True)
class ReaderRow:
    reader: str
    readings: int
    with_adjudicated: Comparison
    with_model: Comparison


@dataclass
class AgreementStats:
    policy: str
    readers_needed: int
    resamples: int
    confidence: float
    n_readings: int = 0
    n_images: int = 0
    n_adjudicated: int = 0
    pairs: list[PairRow] = field(default_factory=list)
    fleiss: Estimate = field(default_factory=lambda: Estimate(None))
    fleiss_images: int = 0
    fleiss_readers: int = 0
    classes: list[ClassRow] = field(default_factory=list)
    readers: list[ReaderRow] = field(default_factory=list)


def _bootstrap(
    n: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The statistic on all n items, and its percentile interval over resampled items."""
    from scipy.stats import bootstrap

    everything = statistic(np.arange(n))
    if n < 2:
        nan = np.full_like(everything, np.nan, dtype=float)
        return everything, nan, nan
    with warnings.catch_warnings():
        # An undefined kappa in a resample (one category only) makes its interval
        # undefined; the page shows "—" rather than a warning in the logs.
        warnings.simplefilter("ignore")
        result = bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=resamples,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=False,
            random_state=np.random.default_rng(seed),
        )
    return everything, result.confidence_interval.low, result.confidence_interval.high


def _kappa(a: np.ndarray, b: np.ndarray, k: int) -> float:
    from statsmodels.stats.inter_rater import cohens_kappa

    table = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return float(cohens_kappa(table, return_results=False))


def compare(
    a: list[str], b: list[str], categories: list[str], resamples: int, seed: int
) -> Comparison:
    """Agreement and Cohen's kappa of two raters on the same images, with intervals."""
    index = {c: i for i, c in enumerate(categories)}
    codes_a = np.array([index[x] for x in a], dtype=int)
    codes_b = np.array([index[x] for x in b], dtype=int)
    k = len(categories)

    def statistic(items: np.ndarray) -> np.ndarray:
        x, y = codes_a[items], codes_b[items]
        return np.array([np.mean(x == y) if len(x) else np.nan, _kappa(x, y, k)])

    if not len(codes_a):
        return Comparison(0, Estimate(None), Estimate(None))
    value, low, high = _bootstrap(len(codes_a), statistic, resamples, seed)
    return Comparison(
        len(codes_a),
        Estimate.of(value[0], low[0], high[0]),
        Estimate.of(value[1], low[1], high[1]),
    )


def _fleiss(table: np.ndarray) -> float:
    from statsmodels.stats.inter_rater import fleiss_kappa

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return float(fleiss_kappa(table, method="fleiss"))


def _fleiss_estimates(table: np.ndarray, resamples: int) -> list[Estimate]:
    """Fleiss' kappa overall, then one-vs-rest per category, each with its interval."""
    m = int(table[0].sum())

    def statistic(items: np.ndarray) -> np.ndarray:
        rows = table[items]
        overall = [_fleiss(rows)]
        per_class = [
            _fleiss(np.stack([rows[:, c], m - rows[:, c]], axis=1)) for c in range(table.shape[1])
        ]
        return np.array(overall + per_class)

    value, low, high = _bootstrap(len(table), statistic, resamples, SEED)
    return [Estimate.of(v, lo, hi) for v, lo, hi in zip(value, low, high, strict=True)]


def compute(resamples: int | None = None) -> AgreementStats:
    """Every statistic of the page from the verdicts, adjudications and predictions."""
    resamples = resamples or settings.CXR_AGREEMENT_BOOTSTRAP
    policy = current_policy()
    stats = AgreementStats(
        policy=policy.name,
        readers_needed=policy.readers,
        resamples=resamples,
        confidence=CONFIDENCE,
    )
    verdicts: dict[int, dict[str, str]] = defaultdict(dict)  # image -> reader -> label
    for image_id, reader, label in ExpertLabel.objects.values_list(
        "image_id", "annotator__username", "label"
    ):
        verdicts[image_id][reader] = label
    adjudicated = dict(Adjudication.objects.values_list("image_id", "label"))
    model: dict[int, str] = {}
    for image_id, label in (
        Prediction.objects.filter(status=Prediction.Status.DONE, image_id__in=verdicts)
        .order_by("image_id", "pk")
        .values_list("image_id", "label")
    ):
        model[image_id] = label  # the newest finished prediction of each image
    stats.n_readings = sum(len(v) for v in verdicts.values())
    stats.n_images = len(verdicts)
    stats.n_adjudicated = len(adjudicated)
    readers = sorted({r for by_reader in verdicts.values() for r in by_reader})

    for number, (a, b) in enumerate(combinations(readers, 2)):
        both = [v for v in verdicts.values() if a in v and b in v]
        if both:
            comparison = compare(
                [v[a] for v in both], [v[b] for v in both], CATEGORIES, resamples, SEED + number
            )
            stats.pairs.append(PairRow(a, b, comparison))

    multi = {image: v for image, v in verdicts.items() if len(v) >= 2}
    counts = Counter(len(v) for v in multi.values())
    if counts:
        m = max(counts, key=lambda size: (counts[size], size))
        rows = [v for v in multi.values() if len(v) == m]
        index = {c: i for i, c in enumerate(CATEGORIES)}
        table = np.zeros((len(rows), len(CATEGORIES)), dtype=int)
        for i, by_reader in enumerate(rows):
            for label in by_reader.values():
                table[i, index[label]] += 1
        overall, *per_class = _fleiss_estimates(table, resamples)
        stats.fleiss, stats.fleiss_images, stats.fleiss_readers = overall, len(rows), m
    else:
        per_class = [Estimate(None)] * len(CATEGORIES)
    all_readings = Counter(label for v in verdicts.values() for label in v.values())
    for category, kappa in zip(CATEGORIES, per_class, strict=True):
        named = [v for v in multi.values() if category in v.values()]
        stats.classes.append(
            ClassRow(
                label=category,
                display=DISPLAY[category],
                readings=all_readings[category],
                images_named=len(named),
                images_unanimous=sum(set(v.values()) == {category} for v in named),
                kappa=kappa,
            )
        )

    for number, reader in enumerate(readers):
        mine = {image: v[reader] for image, v in verdicts.items() if reader in v}
        decided = [image for image in mine if image in adjudicated]
        versus_model = [image for image in mine if image in model and mine[image] in CLASSES]
        stats.readers.append(
            ReaderRow(
                reader=reader,
                readings=len(mine),
                with_adjudicated=compare(
                    [mine[i] for i in decided],
                    [adjudicated[i] for i in decided],
                    CATEGORIES,
                    resamples,
                    SEED + 1000 + number,
                ),
                with_model=compare(
                    [mine[i] for i in versus_model],
                    [model[i] for i in versus_model],
                    CLASSES,
                    resamples,
                    SEED + 2000 + number,
                ),
            )
        )
    return stats


def _fingerprint() -> str:
    """Changes whenever anything the statistics read changes: a verdict given, revised
    or deleted, an adjudication, a prediction finishing; and the settings they use."""
    from django.db.models import Count, Max

    policy = current_policy()
    parts = [
        ExpertLabel.objects.aggregate(n=Count("pk"), last=Max("updated_at"), top=Max("pk")),
        Adjudication.objects.aggregate(n=Count("pk"), last=Max("updated_at"), top=Max("pk")),
        Prediction.objects.filter(status=Prediction.Status.DONE).aggregate(
            n=Count("pk"), last=Max("finished_at"), top=Max("pk")
        ),
        [policy.name, policy.readers, settings.CXR_AGREEMENT_BOOTSTRAP],
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def current() -> AgreementStats:
    """``compute()``, cached until the data it reads changes (the bootstrap takes
    seconds on a few thousand verdicts; the page and its CSV share one result)."""
    from django.core.cache import cache

    key = f"cxr.agreement.{_fingerprint()}"
    stats = cache.get(key)
    if stats is None:
        stats = compute()
        cache.set(key, stats, timeout=24 * 3600)
    return stats


def _cells(estimate: Estimate) -> list[str]:
    return ["" if x is None else f"{x:.4f}" for x in (estimate.value, estimate.low, estimate.high)]


def to_csv(stats: AgreementStats) -> str:
    """One row per estimate: what it compares, on how many images, value and interval."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "subject", "measure", "n_images", "estimate", "ci_low", "ci_high"])
    for pair in stats.pairs:
        subject = f"{pair.reader_a} vs {pair.reader_b}"
        writer.writerow(
            [
                "reader_pair",
                subject,
                "cohen_kappa",
                pair.comparison.n,
                *_cells(pair.comparison.kappa),
            ]
        )
        writer.writerow(
            [
                "reader_pair",
                subject,
                "agreement",
                pair.comparison.n,
                *_cells(pair.comparison.agreement),
            ]
        )
    writer.writerow(
        [
            "overall",
            f"{stats.fleiss_readers} readers per image",
            "fleiss_kappa",
            stats.fleiss_images,
            *_cells(stats.fleiss),
        ]
    )
    for row in stats.classes:
        writer.writerow(
            [
                "class",
                row.label,
                "fleiss_kappa_one_vs_rest",
                stats.fleiss_images,
                *_cells(row.kappa),
            ]
        )
        writer.writerow(["class", row.label, "readings", "", row.readings, "", ""])
        writer.writerow(
            [
                "class",
                row.label,
                "images_named_unanimous",
                row.images_named,
                row.images_unanimous,
                "",
                "",
            ]
        )
    for reader in stats.readers:
        for section, comparison in (
            ("reader_vs_adjudicated", reader.with_adjudicated),
            ("reader_vs_model", reader.with_model),
        ):
            writer.writerow(
                [section, reader.reader, "agreement", comparison.n, *_cells(comparison.agreement)]
            )
            writer.writerow(
                [section, reader.reader, "cohen_kappa", comparison.n, *_cells(comparison.kappa)]
            )
    return out.getvalue()
