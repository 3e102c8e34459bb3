"""`profanity_check.predict_prob` for one string, in plain Python.

The library's own call costs ~20 ms (scikit-learn's per-call validation around a
five-fold CalibratedClassifierCV), and we call it for every streamed sentence on
a shared event loop. The model is linear, so the same number is a dictionary walk:
TF-IDF over the text's known words, a dot product per fold, each fold's sigmoid
calibration, then the mean over folds. Its files are read once, on first use.
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Fold:
    intercept: float
    # Platt scaling: p = 1 / (1 + exp(a * decision + b)).
    a: float
    b: float


@dataclass(frozen=True)
class _Model:
    token_re: re.Pattern[str]
    lowercase: bool
    # word -> (idf, (idf * coef of each fold)); stop words are left out, which is
    # exactly what the vectorizer does before it looks a word up.
    weights: dict[str, tuple[float, tuple[float, ...]]]
    folds: tuple[_Fold, ...]


class ProfanityModelError(RuntimeError):
    """profanity_check's model files are missing or not what this code can read."""


_model: _Model | None = None
_failure: ProfanityModelError | None = None
_lock = threading.Lock()


def abuse_probability(text: str) -> float:
    """The probability, as profanity_check.predict_prob gives it, that `text` is abusive."""
    model = _model or _load()
    if model.lowercase:
        text = text.lower()
    counts = Counter(model.token_re.findall(text))
    folds = model.folds
    dots = [0.0] * len(folds)
    norm_sq = 0.0
    for word, count in counts.items():
        entry = model.weights.get(word)
        if entry is None:
            continue
        idf, scaled_coefs = entry
        norm_sq += (count * idf) ** 2
        for i, scaled in enumerate(scaled_coefs):
            dots[i] += count * scaled
    # l2 normalisation divides every term by the norm; doing it once on the dot
    # product is the same number. No known word: the zero vector, as in sklearn.
    norm = math.sqrt(norm_sq) or 1.0
    total = 0.0
    for fold, dot in zip(folds, dots, strict=True):
        total += _sigmoid(fold, dot / norm + fold.intercept)
    return total / len(folds)


def warm_up() -> None:
    """Read the model now (seconds: it imports scikit-learn), so no check pays for it."""
    _load()


def loaded() -> bool:
    return _model is not None


def _sigmoid(fold: _Fold, decision: float) -> float:
    exponent = fold.a * decision + fold.b
    # math.exp overflows past ~709; the probability is 0 to double precision there.
    if exponent > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(exponent))


def _load() -> _Model:
    global _model, _failure
    with _lock:
        if _model is None:
            # A broken install fails every call the same way; reading the files again
            # each time would cost seconds per call.
            if _failure is not None:
                raise _failure
            try:
                _model = _read_model()
            except Exception as exc:
                _failure = ProfanityModelError(f"cannot read profanity_check's model: {exc}")
                raise _failure from exc
        return _model


def _data_dir() -> Path:
    # find_spec does not import the package: importing profanity_check would load
    # both files a second time, into objects we would never use.
    spec = importlib.util.find_spec("profanity_check")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("alt-profanity-check is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_model() -> _Model:
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    data = _data_dir()
    with warnings.catch_warnings():
        # The pickles name the scikit-learn that wrote them; we only read their arrays.
        warnings.simplefilter("ignore", InconsistentVersionWarning)
        vectorizer = joblib.load(data / "vectorizer.joblib")
        classifier = joblib.load(data / "model.joblib")

    # Refuse anything this arithmetic does not reproduce, rather than answer wrongly.
    expected = {
        "analyzer": "word",
        "ngram_range": (1, 1),
        "norm": "l2",
        "use_idf": True,
        "binary": False,
        "sublinear_tf": False,
        "strip_accents": None,
        "preprocessor": None,
        "tokenizer": None,
    }
    params = vectorizer.get_params()
    wrong = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
    if wrong:
        raise RuntimeError(f"unexpected profanity_check vectorizer settings: {wrong}")
    if classifier.method != "sigmoid" or list(classifier.classes_) != [0, 1]:
        raise RuntimeError("unexpected profanity_check classifier: not a binary sigmoid fit")

    folds = []
    coefs = []
    for calibrated in classifier.calibrated_classifiers_:
        estimator = calibrated.estimator
        (calibrator,) = calibrated.calibrators
        folds.append(
            _Fold(
                intercept=float(estimator.intercept_[0]),
                a=float(calibrator.a_),
                b=float(calibrator.b_),
            )
        )
        coefs.append(estimator.coef_[0].tolist())

    idf = vectorizer.idf_.tolist()
    stop_words = vectorizer.get_stop_words() or frozenset()
    weights = {
        word: (idf[j], tuple(idf[j] * coef[j] for coef in coefs))
        for word, j in vectorizer.vocabulary_.items()
        if word not in stop_words
    }
    return _Model(
        token_re=re.compile(vectorizer.token_pattern),
        lowercase=bool(vectorizer.lowercase),
        weights=weights,
        folds=tuple(folds),
    )
