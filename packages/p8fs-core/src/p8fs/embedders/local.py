"""``P8FS_EMBEDDER=local``: a sentence encoder from a folder on disk, offline, in numpy.

The folder is what sentence-transformers and Hugging Face save for a BERT encoder
(all-MiniLM-L6-v2, bge-small-en-v1.5, e5-small-v2, ...): ``config.json``, ``tokenizer.json``,
``model.safetensors`` and optionally ``sentence_bert_config.json`` (``max_seq_length``) and
``1_Pooling/config.json`` (mean or CLS pooling). Nothing is ever downloaded.

Why numpy and not torch or onnxruntime: torch is gigabytes, and these folders ship no ONNX
graph. A BERT forward pass is a dozen matrix products per layer; numpy's BLAS runs
all-MiniLM-L6-v2 at a few hundred chunks per second on two cores, and the weights are read from
``model.safetensors`` directly (the format is a JSON header and raw little-endian arrays, so no
safetensors package either). Only tokenizers (Rust, ~10 MB) is needed besides numpy.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p8fs.embedding import EXTRA, Embedder, EmbedderUnavailable, require_numpy
from p8fs.errors import ConfigurationError, ProviderUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import numpy

    from p8fs.settings import Settings

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}

#: Texts encoded per forward pass (bounded memory: attention is batch x heads x len x len).
FORWARD_BATCH = 16


def read_safetensors(path: Path) -> dict[str, numpy.ndarray]:
    """Every tensor of a ``.safetensors`` file as a float32 (or integer) numpy array."""
    np = require_numpy()
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out: dict[str, numpy.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConfigurationError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(
            data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=start
        ).reshape(info["shape"])
        out[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return out


class _Bert:
    """A BERT encoder's forward pass (post-LayerNorm, GELU, absolute positions) in numpy."""

    def __init__(self, folder: Path) -> None:
        self.np = np = require_numpy()
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type", "bert") != "bert":
            raise ConfigurationError(
                f"P8FS_EMBEDDING_MODEL={folder}: model_type {config.get('model_type')!r} is not "
                "supported by the local embedder (BERT encoders only, e.g. all-MiniLM-L6-v2, "
                "bge-small-en-v1.5, e5-small-v2)"
            )
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        weights = read_safetensors(folder / "model.safetensors")
        # Some exports prefix every name with "bert." (BertForX): strip it.
        self.w = {k.removeprefix("bert."): v for k, v in weights.items()}
        # Pre-transpose the dense weights once (torch stores them out x in).
        for key in list(self.w):
            if key.endswith(".weight") and self.w[key].ndim == 2 and "embeddings" not in key:
                self.w[key] = np.ascontiguousarray(self.w[key].T)

    def _ln(self, x: numpy.ndarray, prefix: str) -> numpy.ndarray:
        np = self.np
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        out: numpy.ndarray = (x - mean) / np.sqrt(var + self.eps) * self.w[
            prefix + ".weight"
        ] + self.w[prefix + ".bias"]
        return out

    def _dense(self, x: numpy.ndarray, prefix: str) -> numpy.ndarray:
        # One 2-D product (a single BLAS call) rather than a stacked one per sequence.
        weight = self.w[prefix + ".weight"]
        flat = x.reshape(-1, x.shape[-1]) @ weight
        flat += self.w[prefix + ".bias"]
        out: numpy.ndarray = flat.reshape(*x.shape[:-1], weight.shape[1])
        return out

    def _gelu(self, x: numpy.ndarray) -> numpy.ndarray:
        # Exact (erf) GELU, as BERT's "gelu"; erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
        np = self.np
        z = x * np.float32(0.7071067811865476)  # a float64 scalar would promote everything
        sign = np.sign(z)
        a = np.abs(z)
        t = 1.0 / (1.0 + 0.3275911 * a)
        poly = t * (
            0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
        )
        erf = sign * (1.0 - poly * np.exp(-a * a))
        out: numpy.ndarray = 0.5 * x * (1.0 + erf)
        return out

    def forward(self, ids: numpy.ndarray, mask: numpy.ndarray, types: numpy.ndarray) -> numpy.ndarray:
        """Last hidden states, ``(batch, length, hidden)``."""
        np = self.np
        w = self.w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(length)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        head = self.hidden // self.heads
        bias = ((1.0 - mask[:, None, None, :].astype(np.float32)) * -1e9).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(t: numpy.ndarray) -> numpy.ndarray:
                out: numpy.ndarray = t.reshape(batch, length, self.heads, head).transpose(0, 2, 1, 3)
                return out

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head)) + bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            x = self._ln(
                self._dense(context, f"{p}.attention.output.dense") + x,
                f"{p}.attention.output.LayerNorm",
            )
            inner = self._gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


class LocalEmbedder(Embedder):
    """A BERT sentence encoder from a local folder (``P8FS_EMBEDDING_MODEL``), run in numpy."""

    name = "local"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self._model: _Bert | None = None
        self._tokenizer: Any = None
        self._pooling = "mean"
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEmbedder:
        if not settings.embedding_model:
            raise ConfigurationError(
                "P8FS_EMBEDDER=local needs P8FS_EMBEDDING_MODEL: the folder holding the model's "
                "config.json, tokenizer.json and model.safetensors"
            )
        return cls(settings.embedding_model)

    @property
    def model_id(self) -> str:
        folder = self.folder.resolve()
        name = folder.name
        if name.lower() in ("model", "models", "snapshot") and folder.parent.name:
            name = f"{folder.parent.name}/{name}"
        return f"local:{name}"

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            missing = [
                n
                for n in ("config.json", "tokenizer.json", "model.safetensors")
                if not (self.folder / n).is_file()
            ]
            if missing:
                raise ConfigurationError(
                    f"P8FS_EMBEDDING_MODEL={self.folder} is not a model folder: missing "
                    f"{', '.join(missing)} (the local embedder never downloads a model)"
                )
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:  # pragma: no cover - tokenizers is in the extra
                raise ProviderUnavailable(
                    f"the local embedder needs tokenizers: install {EXTRA}", extra=EXTRA
                ) from exc
            max_len = 512
            st_config = self.folder / "sentence_bert_config.json"
            if st_config.is_file():
                max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
            pooling = self.folder / "1_Pooling" / "config.json"
            if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
                self._pooling = "cls"
            tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=max_len)
            tokenizer.no_padding()
            self._tokenizer = tokenizer
            self._model = _Bert(self.folder)

    def encode(self, texts: Sequence[str]) -> numpy.ndarray:
        """Vectors for ``texts`` (blocking: CPU work; :meth:`embed` runs it in a thread)."""
        np = require_numpy()
        self._load()
        assert self._model is not None
        encodings = self._tokenizer.encode_batch(list(texts))
        out = np.zeros((len(texts), self._model.hidden), dtype=np.float32)
        # Similar lengths together: padding costs as much as text.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), FORWARD_BATCH):
            group = order[start : start + FORWARD_BATCH]
            length = max(len(encodings[i].ids) for i in group)
            ids = np.zeros((len(group), length), dtype=np.int64)
            mask = np.zeros((len(group), length), dtype=np.int64)
            types = np.zeros((len(group), length), dtype=np.int64)
            for row, i in enumerate(group):
                enc = encodings[i]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                mask[row, :n] = 1
                types[row, :n] = enc.type_ids
            hidden = self._model.forward(ids, mask, types)
            if self._pooling == "cls":
                pooled = hidden[:, 0, :]
            else:
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            out[group] = pooled
        return out

    async def embed(self, texts: Sequence[str]) -> numpy.ndarray:
        try:
            return await asyncio.to_thread(self.encode, texts)
        except (ConfigurationError, ProviderUnavailable):
            raise
        except MemoryError as exc:
            raise EmbedderUnavailable(f"local embedder {self.model_id}: out of memory") from exc
