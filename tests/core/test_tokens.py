"""Offline token counting: the rebuilt vocabularies are tiktoken's, and nothing is downloaded.

The claims tested here are the ones :mod:`p8fs.tokens` rests on: quicktok's bundled vocabulary
rebuilds byte for byte into the file tiktoken expects (same sha256), counting works in a process
that cannot open a network connection and starts from an empty cache, and the fast quicktok
engine gives exactly tiktoken's ids, on real documents and on random Unicode.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from p8fs.errors import ConfigurationError
from p8fs.tokens import (
    BPE_FILES,
    CACHE_DIR_VARIABLE,
    DEFAULT_ENCODING,
    SUPPORTED_ENCODINGS,
    count_tokens,
    ensure_bpe_file,
    get_encoding,
    get_tokenizer,
)
from tests.fixtures.servers import corpus_path

# Real text of several kinds: Markdown with box drawing and emoji, a JSON transcript, SRT.
CORPUS_TEXTS = (
    "p8fs_sample_data/content/Sample.md",
    "transcripts/qmsum_ES2005a.json",
    "transcripts/podcastns_example.srt",
)

# Random text with the awkward parts over-represented: whitespace runs, CRLF, emoji sequences,
# combining marks, CJK, special-token strings that must count as plain text.
AWKWARD = st.sampled_from(
    [
        " ",
        "   ",
        "\t",
        "\r\n",
        "\n\n\n",
        "👨‍👩‍👧‍👦",
        "👍🏽",
        "🇩🇪",
        "e\u0301\u0302",
        "日本語の文章です。",
        "<|endoftext|>",
        "<|endofprompt|>",
        "don't",
        "1234567",
    ]
)
UNICODE_TEXT = st.lists(st.one_of(AWKWARD, st.text(max_size=20)), max_size=25).map("".join)


@pytest.mark.parametrize("name", SUPPORTED_ENCODINGS)
def test_rebuilt_vocabulary_is_the_file_tiktoken_expects(name: str, tmp_path: Path) -> None:
    path = ensure_bpe_file(name, cache_dir=tmp_path)
    bpe = BPE_FILES[name]
    # tiktoken's cache key is the sha1 of the download URL, and it only accepts the sha256 below.
    assert path.name == hashlib.sha1(bpe.url.encode()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == bpe.sha256
    # The hashes we hold are the ones tiktoken's own constructor insists on.
    import tiktoken_ext.openai_public as openai_public

    source = Path(openai_public.__file__).read_text()
    assert bpe.url in source and bpe.sha256 in source


def test_a_corrupt_cached_vocabulary_is_replaced(tmp_path: Path) -> None:
    bpe = BPE_FILES["cl100k_base"]
    (tmp_path / bpe.cache_key).write_bytes(b"not a vocabulary\n")
    path = ensure_bpe_file("cl100k_base", cache_dir=tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == bpe.sha256
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left a temporary file behind"


def test_get_encoding_is_a_real_tiktoken_encoding_and_leaves_the_environment_alone() -> None:
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    encoding = get_encoding(DEFAULT_ENCODING)
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == "o200k_base"
    assert encoding.n_vocab == 200019
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert get_encoding(DEFAULT_ENCODING) is encoding  # cached per name
    assert os.environ.get("TIKTOKEN_CACHE_DIR") == before


@pytest.mark.parametrize("name", ["gpt2", "o200k", "", "p50k_base"])
def test_unknown_encoding_names_the_setting(name: str) -> None:
    with pytest.raises(ConfigurationError, match="P8FS_TOKEN_ENCODING") as info:
        count_tokens("hello", name)
    assert "o200k_base" in str(info.value)  # says what would work
    with pytest.raises(ConfigurationError, match="P8FS_TOKEN_ENCODING"):
        get_encoding(name)


@pytest.mark.parametrize("name", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("relative", CORPUS_TEXTS)
def test_counts_equal_tiktoken_on_real_documents(name: str, relative: str) -> None:
    text = corpus_path(relative).read_text(encoding="utf-8")
    reference = get_encoding(name).encode_ordinary(text)
    assert count_tokens(text, name) == len(reference)
    assert get_tokenizer(name).encode(text) == reference


@settings(max_examples=200, deadline=None)
@given(text=UNICODE_TEXT, name=st.sampled_from(SUPPORTED_ENCODINGS))
def test_counts_equal_tiktoken_on_random_unicode(text: str, name: str) -> None:
    assert get_tokenizer(name).encode(text) == get_encoding(name).encode_ordinary(text)
    assert count_tokens(text, name) == len(get_encoding(name).encode_ordinary(text))


def test_lone_surrogates_count_like_tiktoken() -> None:
    text = "abc\ud800def \udfff end"
    assert count_tokens(text) == len(get_encoding().encode_ordinary(text))


@settings(max_examples=200, deadline=None)
@given(text=UNICODE_TEXT, data=st.data())
def test_prefix_chars_is_the_longest_whole_character_prefix(text: str, data: st.DataObject) -> None:
    tokenizer = get_tokenizer()
    tokens = tokenizer.encode(text)
    n = data.draw(st.integers(0, len(tokens)))
    chars = tokenizer.prefix_chars(tokens, n)
    covered = get_encoding().decode_bytes(tokens[:n])
    assert covered.startswith(text[:chars].encode())
    if chars < len(text):  # one more character would need bytes of the next token
        assert not covered.startswith(text[: chars + 1].encode())
    assert tokenizer.suffix_start(tokens, len(tokens) - n) == chars


# A child process with every non-loopback connection refused, fresh caches, no TIKTOKEN_* hints.
OFFLINE_CHILD = textwrap.dedent(
    """
    import json, os, socket, sys

    class Blocked(OSError):
        pass

    def _is_loopback(address):
        host = address[0] if isinstance(address, tuple) else address
        return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost"))

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise Blocked(f"network blocked: {address}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise Blocked(f"network blocked: {address}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback((host,)):
            raise Blocked(f"name resolution blocked: {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo

    # Without p8fs, tiktoken would try to download (and fail here): prove the block works.
    import tiktoken
    try:
        tiktoken.get_encoding("r50k_base")
        plain_tiktoken = "loaded"
    except Exception as exc:
        plain_tiktoken = f"{type(exc).__name__}: {exc}"

    from p8fs.tokens import count_tokens, get_encoding, token_cache_dir
    encoding = get_encoding("o200k_base")
    result = {
        "plain_tiktoken": plain_tiktoken,
        "count": count_tokens("Offline counting works: 日本語 🙂"),
        "tiktoken_count": len(encoding.encode_ordinary("Offline counting works: 日本語 🙂")),
        "cl100k": count_tokens("Offline counting works", "cl100k_base"),
        "cache_files": sorted(os.listdir(token_cache_dir())),
        "tiktoken_cache_dir_after": os.environ.get("TIKTOKEN_CACHE_DIR"),
    }
    print(json.dumps(result))
    """
)


def test_token_counting_works_offline_from_an_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "p8fs-tokens"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TIKTOKEN_", "DATA_GYM_", "P8FS_TOKEN_"))
    }
    env[CACHE_DIR_VARIABLE] = str(cache)
    env["TMPDIR"] = str(tmp_path / "tmp")  # tiktoken's default cache lives under the temp dir
    (tmp_path / "tmp").mkdir()
    env["HOME"] = str(tmp_path / "home")
    completed = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "blocked" in result["plain_tiktoken"], result["plain_tiktoken"]
    assert result["count"] == result["tiktoken_count"] > 0
    assert result["cl100k"] > 0
    assert result["cache_files"] == sorted(BPE_FILES[name].cache_key for name in ("o200k_base",))
    assert result["tiktoken_cache_dir_after"] is None
