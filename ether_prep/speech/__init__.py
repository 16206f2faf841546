"""Pure speech logic: word timing fixes, the completeness guard, diarization by clustering, speaker assignment,
utterances, text normalisation; and the interfaces of the speech backends (:mod:`.backends`).

No model and no heavy library is imported here (numpy always; clustering and assignment go through the
scikit-learn and scipy adapters, imported inside the functions that need them), so these modules are cheap to
import and easy to test on hand-made inputs. Words are :class:`~ether_prep.records.Word` dicts (``text, start,
end, score, interpolated``, and ``speaker`` once assigned); turns are :class:`~ether_prep.records.Turn`; all
times are seconds from the start of the recording.

- :mod:`.timing`: frame energy, word edges trimmed at silence, untimed words filled in, voiced stretches,
  where to cut a long recording (its longest pause near a time);
- :mod:`.completeness`: speech without words found, re-decoding planned, words put inside speech;
- :mod:`.diarization`: speech regions, embedding windows, clustering, turns;
- :mod:`.utterances`: speakers to words, words to utterances;
- :mod:`.text`: text normalisation (scoring itself, WER and DER, is the tests' job: jiwer, pyannote.metrics).
"""

from .completeness import (
    cut_long_words,
    cut_stretched_words,
    drop_echoes,
    place_words_in_speech,
    redecode_windows,
    refine_speech_regions,
    restore_cut_words,
    shift_words,
    speech_coverage,
    subtract_spans,
    uncovered_speech,
)
from .diarization import cluster_embeddings, merge_turns, speech_regions, speech_windows, turns_from_windows
from .text import normalize_text
from .timing import fill_missing_times, frame_energy_db, longest_pause, refine_word_times, voiced_spans
from .utterances import SENTENCE_END, assign_speakers, build_utterances, build_utterances_by_stream, utterance_id

__all__ = [
    "SENTENCE_END",
    "assign_speakers",
    "build_utterances",
    "build_utterances_by_stream",
    "cluster_embeddings",
    "cut_long_words",
    "cut_stretched_words",
    "drop_echoes",
    "fill_missing_times",
    "frame_energy_db",
    "longest_pause",
    "merge_turns",
    "normalize_text",
    "place_words_in_speech",
    "redecode_windows",
    "refine_speech_regions",
    "refine_word_times",
    "restore_cut_words",
    "shift_words",
    "speech_coverage",
    "speech_regions",
    "speech_windows",
    "subtract_spans",
    "turns_from_windows",
    "uncovered_speech",
    "utterance_id",
    "voiced_spans",
]
