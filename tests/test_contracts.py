"""Adapters and backends read stage parameters through the protocols of ``ether_prep.contracts``: every name
they read from their params exists on the protocol they are typed against, and every protocol member is a field
of the stage's Params dataclass, so renaming a parameter fails here instead of inside a worker."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from ether_prep import contracts
from ether_prep.stages.diarize import DiarizeParams
from ether_prep.stages.face import FaceParams
from ether_prep.stages.transcribe import TranscribeParams

from .conftest import ROOT

# Each protocol and the Params class its adapters receive.
RECEIVES = {"AsrParams": TranscribeParams, "PyannoteParams": DiarizeParams, "VoiceParams": DiarizeParams,
            "FaceModelParams": FaceParams}
READERS = [*sorted((ROOT / "ether_prep" / "adapters").glob("*.py")), ROOT / "ether_prep" / "speech" / "backends.py",
           ROOT / "ether_prep" / "face" / "backends.py"]


def _members(protocol: str) -> set[str]:
    cls = getattr(contracts, protocol)
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


def _params_annotation(cls: ast.ClassDef) -> str | None:
    """The annotation of a ``params`` argument of any method of ``cls``."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            for arg in node.args.args:
                if arg.arg == "params" and arg.annotation is not None:
                    return ast.unparse(arg.annotation)
    return None


def _reads(cls: ast.ClassDef) -> list[tuple[int, str]]:
    """(line, name) of each attribute read from ``params``, ``self.params`` or a local bound to ``self.params``."""
    out = []
    for func in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        aliases = {"params"} | {t.id for n in ast.walk(func) if isinstance(n, ast.Assign)
                                and ast.unparse(n.value) == "self.params" for t in n.targets
                                if isinstance(t, ast.Name)}
        for node in ast.walk(func):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                base = ast.unparse(node.value)
                if base in aliases or base == "self.params":
                    out.append((node.lineno, node.attr))
    return out


def unknown_reads(source: str, where: str) -> list[str]:
    """Every params read in ``source`` that its class's params protocol lacks (or that has no protocol)."""
    tree = ast.parse(source)
    classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    problems = []
    for cls in classes.values():
        protocol, bases = _params_annotation(cls), [ast.unparse(b) for b in cls.bases]
        while protocol is None and bases and bases[0] in classes:  # inherited __init__(model, params)
            base = classes[bases[0]]
            protocol, bases = _params_annotation(base), [ast.unparse(b) for b in base.bases]
        for line, name in _reads(cls):
            if protocol not in RECEIVES:
                problems.append(f"{where}:{line}: {cls.name} reads params.{name} through {protocol!r}, not a "
                                f"protocol of ether_prep.contracts")
            elif name not in _members(protocol):
                problems.append(f"{where}:{line}: {cls.name} reads params.{name}, which {protocol} lacks")
    return problems


@pytest.mark.parametrize("protocol", sorted(RECEIVES))
def test_every_protocol_member_is_a_field_of_the_params_it_stands_for(protocol: str) -> None:
    fields = {f.name for f in dataclasses.fields(RECEIVES[protocol])}
    assert _members(protocol) and not _members(protocol) - fields, (protocol, _members(protocol) - fields)


def test_every_params_read_of_an_adapter_is_in_its_protocol() -> None:
    problems, reads = [], 0
    for path in READERS:
        source = path.read_text(encoding="utf-8")
        problems += unknown_reads(source, str(path.relative_to(ROOT)))
        reads += sum(len(_reads(c)) for c in ast.walk(ast.parse(source)) if isinstance(c, ast.ClassDef))
    assert not problems, "\n".join(problems)
    assert reads >= 30  # the whisperx transcriber alone reads 18 parameters: the walk sees them


def test_a_renamed_parameter_is_caught() -> None:
    """The check reports a read of a name the protocol lacks (``chunk_size``, renamed ``chunk_s``) and a read
    through ``Any``."""
    source = Path(ROOT / "ether_prep" / "adapters" / "whisperx_asr.py").read_text(encoding="utf-8")
    stale = source.replace("self.params.chunk_s", "self.params.chunk_size", 1)
    assert stale != source
    found = unknown_reads(stale, "whisperx_asr.py")
    assert len(found) == 1 and "reads params.chunk_size, which AsrParams lacks" in found[0], found
    untyped = unknown_reads("class A:\n    def __init__(self, params: Any):\n        x = params.device\n", "a.py")
    assert untyped == ["a.py:3: A reads params.device through 'Any', not a protocol of ether_prep.contracts"]


def test_transcription_is_the_transcribers_contract() -> None:
    """The stage and the Transcriber interface type against the leaf module's Transcription."""
    from ether_prep.adapters import whisperx_asr
    from ether_prep.speech import backends

    hints = inspect.get_annotations(backends.Transcriber.transcribe, eval_str=True)
    assert hints["return"] is contracts.Transcription
    assert inspect.get_annotations(whisperx_asr.WhisperxTranscriber.transcribe, eval_str=True)["return"] is \
        contracts.Transcription
    assert not hasattr(whisperx_asr, "AsrResult")


def test_contracts_is_a_leaf() -> None:
    """Adapters, backends and stages all import it: it imports nothing of ether_prep but the records."""
    tree = ast.parse((ROOT / "ether_prep" / "contracts.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert imported == {"records"}


def test_every_whisperx_hook_names_what_it_mirrors() -> None:
    """Each hook into whisperx's private API says which upstream function, of which version, it mirrors; the
    version is the one installed (read the hooks again after an upgrade)."""
    from importlib.metadata import version

    from ether_prep.adapters import whisperx_hooks

    assert len(whisperx_hooks.__all__) == 4
    for name in whisperx_hooks.__all__:
        doc = getattr(whisperx_hooks, name).__doc__ or ""
        assert "Mirrors ``whisperx." in doc and f"whisperx {version('whisperx')}" in doc, name
