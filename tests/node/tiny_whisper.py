"""Build a tiny, deterministic Whisper model for tests (numpy + CTranslate2 + tokenizers).

Real Whisper weights are tens of megabytes and their output is fuzzy, so tests that assert the
whole audio path (decode, resample, VAD, transcribe, time offsets) would be slow and vague. This
module writes a CTranslate2 Whisper model of about a megabyte that always transcribes *any*
speech window to :data:`TINY_WHISPER_TEXT`, through the very same faster-whisper code path as a
real model: real ``model.bin``, real ``tokenizer.json``, real timestamp rules.

How it works: every decoder block is zeroed, so the residual stream carries just the embedding of
the previous token; each token of the fixed sentence has a one-hot embedding, and the output
projection maps "previous token" to "next token" with a large margin. The decoder is thus a
little state machine: ``<|startoftranscript|>`` -> ``<|en|>`` (language detection),
``<|transcribe|>`` -> ``<|0.00|>`` -> the sentence's words -> ``<|2.00|>`` -> ``<|endoftext|>``.
Every other token falls through to the output bias, which favours ``<|endoftext|>``. The
vocabulary is laid out exactly like OpenAI's multilingual one (50 257 text tokens, then the
special tokens, 99 languages and 1 501 timestamps) because CTranslate2 decides that a model is
multilingual from its vocabulary size.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

#: What the tiny model hears in every window of speech.
TINY_WHISPER_TEXT = "The tiny model hears this fixed sentence."
#: The end timestamp the tiny model gives each segment, relative to its 30 s window.
TINY_WHISPER_SEGMENT_SECONDS = 2.0

_TEXT_VOCAB_SIZE = 50257
_N_TIMESTAMPS = 1501
_N_MELS = 80
#: Whisper tiny's 99 languages, in OpenAI's token order.
_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su"
).split()
_SPECIALS_BEFORE_LANGUAGES = ("<|endoftext|>", "<|startoftranscript|>")
_SPECIALS_AFTER_LANGUAGES = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what ByteLevel pre-tokenizes to)."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _text_vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary holding each word of the sentence as one token.

    Each word gets the merge chain that builds it left to right, plus GPT-2's ``Ġ-`` and ``Ġ'``
    merges: faster-whisper suppresses the first token of ``" -"`` and ``" '"``, which without
    those merges would be the bare space and would forbid every word.
    """
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for char in _byte_level_alphabet():
        add(char)
    for word in [*words, "Ġ-", "Ġ'"]:
        prefix = word[0]
        for char in word[1:]:
            if prefix + char not in vocab:
                merges.append((prefix, char))
                add(prefix + char)
            prefix += char
    for index in range(len(vocab), _TEXT_VOCAB_SIZE):
        add(f"<|unused{index}|>")
    return vocab, merges


def build_tiny_whisper(directory: Path) -> Path:
    """Write the tiny model into ``directory`` (created) and return it.

    The folder holds what a faster-whisper model folder holds: ``model.bin``, ``config.json``,
    ``vocabulary.json``, ``tokenizer.json`` and ``preprocessor_config.json``.
    """
    import ctranslate2
    from ctranslate2.specs import whisper_spec
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = [piece for piece, _ in byte_level.pre_tokenize_str(" " + TINY_WHISPER_TEXT)]
    text_vocab, merges = _text_vocabulary(words)
    tokenizer = Tokenizer(models.BPE(vocab=text_vocab, merges=merges))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        *_SPECIALS_BEFORE_LANGUAGES,
        *(f"<|{code}|>" for code in _LANGUAGES),
        *_SPECIALS_AFTER_LANGUAGES,
    ]
    tokenizer.add_special_tokens(specials)
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(_N_TIMESTAMPS)]
    tokenizer.add_tokens(timestamps)
    tokenizer.save(str(directory / "tokenizer.json"))

    vocabulary = sorted(tokenizer.get_vocab(), key=tokenizer.token_to_id)
    # CTranslate2 treats a Whisper model as multilingual when its vocabulary holds the empty
    # token, as OpenAI's multilingual vocabulary does at id 50256 (the last text token).
    vocabulary[_TEXT_VOCAB_SIZE - 1] = ""
    size = len(vocabulary)

    def tid(token: str) -> int:
        index = tokenizer.token_to_id(token)
        assert index is not None, token
        return index

    sentence = tokenizer.encode(" " + TINY_WHISPER_TEXT, add_special_tokens=False).ids
    assert len(sentence) == len(set(sentence)), "each word must be a distinct state"
    end_stamp = f"<|{TINY_WHISPER_SEGMENT_SECONDS:.2f}|>"
    chain = [
        tid("<|transcribe|>"),
        tid("<|0.00|>"),
        *sentence,
        tid(end_stamp),
        tid("<|endoftext|>"),
    ]
    transitions = dict(itertools.pairwise(chain))
    transitions[tid("<|startoftranscript|>")] = tid("<|en|>")

    d_model = len(transitions)
    ffn = 4
    f32 = np.float32
    spec = whisper_spec.WhisperSpec(1, 1, 1, 1)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=f32)

    def layer_norm(ln: object) -> None:
        ln.gamma = np.ones(d_model, dtype=f32)  # type: ignore[attr-defined]
        ln.beta = zeros(d_model)  # type: ignore[attr-defined]

    def linear(lin: object, rows: int, cols: int) -> None:
        lin.weight = zeros(rows, cols)  # type: ignore[attr-defined]
        lin.bias = zeros(rows)  # type: ignore[attr-defined]

    enc = spec.encoder
    enc.conv1.weight, enc.conv1.bias = zeros(d_model, _N_MELS, 3), zeros(d_model)
    enc.conv2.weight, enc.conv2.bias = zeros(d_model, d_model, 3), zeros(d_model)
    enc.position_encodings.encodings = zeros(1500, d_model)
    layer_norm(enc.layer_norm)
    for layer in enc.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * d_model, d_model)
        linear(layer.self_attention.linear[1], d_model, d_model)
        layer_norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, ffn, d_model)
        linear(layer.ffn.linear_1, d_model, ffn)

    dec = spec.decoder
    embeddings = zeros(size, d_model)
    projection = zeros(size, d_model)
    for state, (token, successor) in enumerate(transitions.items()):
        embeddings[token, state] = 1.0
        projection[successor, state] = 10.0
    dec.embeddings.weight = embeddings
    dec.position_encodings.encodings = zeros(448, d_model)
    layer_norm(dec.layer_norm)
    for layer in dec.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * d_model, d_model)
        linear(layer.self_attention.linear[1], d_model, d_model)
        layer_norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], d_model, d_model)
        linear(layer.attention.linear[1], 2 * d_model, d_model)
        linear(layer.attention.linear[2], d_model, d_model)
        layer_norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, ffn, d_model)
        linear(layer.ffn.linear_1, d_model, ffn)
    dec.projection.weight = projection
    bias = zeros(size)
    bias[tid("<|endoftext|>")] = 5.0  # tokens outside the chain end the segment
    dec.projection.bias = bias

    spec.register_vocabulary(vocabulary)
    config = spec.config
    config.suppress_ids = []
    config.suppress_ids_begin = [tid("<|endoftext|>")]
    config.lang_ids = [tid(f"<|{code}|>") for code in _LANGUAGES]
    config.alignment_heads = [(0, 0)]
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(directory))
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": _N_MELS, "sampling_rate": 16000, "hop_length": 160}),
        encoding="utf-8",
    )
    assert ctranslate2.contains_model(str(directory))
    return directory
