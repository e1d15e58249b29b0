"""Keep third-party engines off the network: no telemetry, no model downloads.

Why this module exists: unstructured (0.27) pings ``packages.unstructured.io`` on import and on
every ``partition_*`` call unless ``DO_NOT_TRACK``/``SCARF_NO_ANALYTICS`` is set, and the first
time a partitioner classifies text it calls ``spacy.load("en_core_web_sm")`` and, when that model
is not installed, downloads and pip-installs it from GitHub (raising once offline). A worker must
never do either. :func:`prepare_unstructured` is the single place that switches both off, and it
must run before unstructured is imported (the telemetry switch is read from the environment).

Offline, unstructured gets a blank English spaCy pipeline with a rule-based sentencizer. Element
text is unchanged; only the verb test behind ``NarrativeText`` has no POS tags to work with, so
some short paragraphs come out as ``UncategorizedText`` instead. When ``en_core_web_sm`` *is*
installed locally it is used as before: only the download is removed, not the real loading path.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from p8fs.errors import ConfigurationError

if TYPE_CHECKING:
    from spacy.language import Language

logger = logging.getLogger(__name__)

#: Environment switches honoured by the libraries we load: any non-empty value opts out.
#: ``DO_NOT_TRACK`` is the consoledonottrack.com convention (unstructured, many others);
#: ``SCARF_NO_ANALYTICS`` is Scarf's own; ``UNSTRUCTURED_DISABLE_NOTICE`` silences the
#: advertising banner unstructured logs on the first partition call.
TELEMETRY_OPT_OUTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "true",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
}

#: The spaCy model unstructured asks for, and the components it would exclude when loading it.
SPACY_MODEL = "en_core_web_sm"

_lock = threading.Lock()
_prepared = False


def disable_telemetry() -> None:
    """Set every known telemetry opt-out that is not already set to a non-empty value.

    A value the user set explicitly is kept (any non-empty value already opts out).
    """
    for name, value in TELEMETRY_OPT_OUTS.items():
        if not (os.environ.get(name) or "").strip():
            os.environ[name] = value


def blank_english_pipeline() -> Language:
    """A spaCy ``Language`` with only a rule-based sentencizer: no weights, nothing to download."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def load_spacy_model_offline(exclude: list[str] | None = None) -> Language:
    """``en_core_web_sm`` if it is installed here, else :func:`blank_english_pipeline`.

    Replaces unstructured's loader, whose fallback is a download from GitHub.
    """
    import spacy

    try:
        return spacy.load(SPACY_MODEL, exclude=exclude or [])
    except OSError:
        logger.info(
            "spaCy model %s is not installed; using a blank English pipeline with a sentencizer "
            "(some element categories differ, text is unchanged)",
            SPACY_MODEL,
        )
        return blank_english_pipeline()


def _refuse_download(*_args: Any, **_kwargs: Any) -> None:
    raise ConfigurationError(
        f"p8fs never downloads models at run time; install the spaCy model {SPACY_MODEL} "
        "into this environment if you want unstructured's POS-based element categories"
    )


def prepare_unstructured() -> None:
    """Make unstructured offline-safe; idempotent and thread-safe, call before every use.

    Raises :class:`ConfigurationError` when the installed unstructured no longer has the loader
    this patches: silently continuing could let it download a model, which we never allow.
    """
    global _prepared
    if _prepared:
        return
    with _lock:
        if _prepared:
            return
        disable_telemetry()
        from unstructured.nlp import tokenize

        loader = getattr(tokenize, "_load_spacy_model", None)
        get_nlp = getattr(tokenize, "_get_nlp", None)
        if loader is None or get_nlp is None or not hasattr(get_nlp, "cache_clear"):
            raise ConfigurationError(
                "this unstructured version loads its spaCy model in a way p8fs-node does not know "
                "how to keep offline; install the unstructured version p8fs-node[office] pins"
            )
        exclude = list(getattr(tokenize, "_SPACY_EXCLUDE", []))
        tokenize._load_spacy_model = lambda: load_spacy_model_offline(exclude)
        if hasattr(tokenize, "_install_spacy_model"):
            tokenize._install_spacy_model = _refuse_download
        get_nlp.cache_clear()
        _prepared = True
