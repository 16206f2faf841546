"""The stage contract: one class per stage, plain Python; executors decide where it runs.

A stage is constructed from its validated :class:`~ether_prep.spec.StageSpec`, loads its models once in
:meth:`Stage.setup` (once per worker, not per file), then processes sessions one at a time with
:meth:`Stage.run`, writing into a fresh Zarr group that the runner hands it. The runner writes the
completion marker after ``run`` returns, so an interrupted stage is never counted as done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..windows import Window

if TYPE_CHECKING:
    from collections.abc import Callable

    import zarr

    from ..records import Session
    from ..spec import StageSpec
    from ..store import SessionGroup, Store

__all__ = ["MANIFESTS", "Each", "NoParams", "Stage", "Window"]

# The root manifests a stage can add columns to (see :mod:`ether_prep.manifest`).
MANIFESTS = ("utterances", "dialogue_pairs", "sessions")


@dataclass(frozen=True)
class Each:
    """A value every manifest row of one session gets (in :meth:`Stage.manifest_values`; a list or array is one
    value per row)."""

    value: Any


@dataclass(frozen=True)
class NoParams:
    """For stages without parameters."""


class Stage(ABC):
    """Base class of all stages.

    Class attributes describe the stage to the config validator and the runner:

    - ``name``: the key used in pipelines.yaml;
    - ``version``: bump it when outputs change, so stored results are recomputed;
    - ``family``: ``"extract"`` (``ether-prep extract``) or ``"align"`` (``ether-prep align``);
    - ``requires``: upstream stages whose completion (and fingerprints) this one depends on;
    - ``needs_stream``: ``"audio"``/``"video"`` when a session without that stream is skipped with a note;
    - ``backends``: accepted backend names, the first being the default;
    - ``Params``: a frozen dataclass of parameters with defaults (unknown keys are config errors);
    - ``libraries``: distributions whose versions are recorded as provenance (per backend: override
      :meth:`library_names`);
    - ``reads_recording``: True for a stage that decodes the recording itself (not an upstream stage's output):
      the file's identity (size, modification time, content digest) joins its fingerprint and marker, so a
      replaced or grown recording makes it stale;
    - ``windowed``: True declares that the stage can compute one recording as time windows: the runner
      asks :meth:`windows`; when it gives more than one, each window is a task of its own (:meth:`run_window`,
      on any worker of the stage, in any order) and a last task joins them (:meth:`join`) into the stage's
      output, which must equal what :meth:`run` writes. So one long recording keeps several workers busy
      (eligibility, planning and the join's checks: :mod:`ether_prep.windows`);
    - ``manifest_columns``: what the stage adds to the root Parquet manifests, per manifest (:data:`MANIFESTS`):
      column name -> (Arrow type: ``string``, ``int64``, ``float64``, ``bool``, ``list<string>``,
      ``list<float32>``; description), the values coming from :meth:`manifest_values`; a name ending
      in ``*`` declares a family (``qc_*``: one column per metric); further items are flags: ``"last"`` puts
      the column after every stage's others, ``"text"`` marks free text (de-identification scrubs it),
      ``"item"`` a column the dataset's items carry. The stage that gives the ``utterance_id`` (``pair_id``)
      column defines the rows of that manifest; the others add columns to them;
    - ``utterance_arrays``: arrays of the stage's group with one row per utterance (row ``i``: utterance ``i``
      of the session, as the ``utterances`` stage numbers them), which the dataset's items carry by name;
    - ``step_arrays``: item key -> array of the stage's group with one row per time step of the ``align``
      stage's tensors (the same rows as ``align/tensors``: utterance i is rows ``row_start:row_start + n_steps``),
      which the dataset's items carry over their steps by that key (``voice``: (T, D)), padded along time by
      ``collate`` (zeros; a session without the array gets zeros and False there).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    family: ClassVar[str] = "extract"
    requires: ClassVar[tuple[str, ...]] = ()
    needs_stream: ClassVar[str | None] = None
    backends: ClassVar[tuple[str, ...]] = ("builtin",)
    Params: ClassVar[type] = NoParams
    libraries: ClassVar[tuple[str, ...]] = ()
    windowed: ClassVar[bool] = False
    reads_recording: ClassVar[bool] = False
    # What it adds to the root manifests and to the dataset's items: a run that selects such a stage brings the
    # manifests up to date at its end (one collect step, after every stage's finalize).
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {}
    utterance_arrays: ClassVar[tuple[str, ...]] = ()
    step_arrays: ClassVar[dict[str, str]] = {}
    # Set by the worker around each ``run``: where :meth:`report_progress` goes (None: nowhere).
    progress_hook: Callable[[float], None] | None = None

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.params: Any = spec.params

    def model_info(self) -> dict[str, str]:
        """Which model this stage resolves to and where from (``{"id": ..., "source": ...}``), without loading it."""
        return {}

    def library_names(self) -> tuple[str, ...]:
        """Distributions this stage, with its configured backend, records the versions of."""
        return self.libraries

    def cuda_engines(self) -> tuple[str, ...]:
        """The engines whose CUDA libraries this stage loads when its ``device`` is a GPU (keys of
        :data:`ether_prep.adapters.cuda_libs.ENGINE_LIBRARIES`); () for a stage that never uses one."""
        return ()

    def fingerprint_inputs(self, session: Session) -> dict[str, Any]:
        """Per-session inputs besides parameters and upstream results that the output depends on (a
        ``sessions.csv`` column, say); they join the fingerprint, so editing them reruns this stage. Called
        for every session on every run: keep it cheap."""
        return {}

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models. Called once per worker before the first session."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release models (e.g. before the next model family loads)."""

    def report_progress(self, media_s: float) -> None:
        """Tell the driver's progress bar how far into the session ``run`` has got, in media seconds. Call it
        as often as is natural (per decoded block, per batch): the worker forwards a few reports a second."""
        if self.progress_hook is not None:
            self.progress_hook(media_s)

    def finalize(self, store: Store) -> None:  # noqa: B027 - optional hook
        """Called once in the driver after the stage ran over all sessions (the root manifests are not written
        here: see ``manifest_columns``)."""

    @classmethod
    def feeds_manifests(cls) -> bool:
        """Whether the root manifests or the dataset's items carry any of this stage's outputs."""
        return bool(cls.manifest_columns or cls.utterance_arrays or cls.step_arrays)

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        """One session's values of :attr:`manifest_columns`, per manifest: ``sessions`` one value per column; the
        others a list per column (one value per row) or :class:`Each`. Called for every session in the store,
        done or not: a column left out is null. The default: nothing (declare columns to give values)."""
        return {}

    @classmethod
    def read_utterance_array(cls, store: SessionGroup, name: str) -> Any:
        """One of :attr:`utterance_arrays` of a session, whole (None when the stage is not done there)."""
        if store.stage_state(cls.name).state != "done":
            return None
        return np.asarray(store.array(cls.name, name)[...])

    @classmethod
    def open_step_arrays(cls, store: SessionGroup) -> dict[str, Any]:
        """The :attr:`step_arrays` of a session by item key, opened, not read (empty when the stage is not done)."""
        state = store.stage_state(cls.name)
        if not cls.step_arrays or state.state != "done":
            return {}
        # Rows of the align tensors: a result computed from another align run than the stored one (stale) has
        # other rows, so it counts as absent until the stage is rerun.
        if (state.info.get("upstream") or {}).get("align") != store.stage_state("align").fingerprint:
            return {}
        group = store.stage_group(cls.name)
        return {key: group[path] for key, path in cls.step_arrays.items()}

    def windows(self, session: Session, store: SessionGroup) -> list[Window]:
        """The time windows to compute ``session`` in (``windowed`` stages; called in the driver once the
        upstream stages are done, whose outputs ``store`` holds: keep it cheap); none or one: the whole
        recording, by :meth:`run`."""
        return []

    def run_window(self, session: Session, store: SessionGroup, window: Window, out: zarr.Group) -> None:
        """Compute one window of ``session`` into ``out`` (a scratch group that :meth:`join` reads)."""
        raise NotImplementedError(f"stage {self.name!r} does not compute windows")

    def join(self, session: Session, store: SessionGroup, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        """Stitch the windows' groups (in window order) into the stage's output ``out``, as :meth:`run`."""
        raise NotImplementedError(f"stage {self.name!r} does not compute windows")

    @abstractmethod
    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        """Process one session, writing outputs into ``out``; return an optional note for ``status``.

        Read upstream outputs through their stages' readers (``read_audio(store)``, ``read_words(store)``, ...):
        one module owns each stage's keys.
        Raise :class:`~ether_prep.errors.EtherPrepError` subclasses with a clear message on bad input.
        """
