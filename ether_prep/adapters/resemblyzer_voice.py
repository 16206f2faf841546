"""resemblyzer adapter: GE2E speaker embeddings (256-d, encoder shipped in the package) and webrtcvad speech
detection (the VAD resemblyzer itself depends on). The only module that imports ``resemblyzer``/``webrtcvad``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import ModelError

__all__ = ["MEL_STEP_S", "VoiceEmbedder", "webrtc_voiced"]

SAMPLE_RATE = 16000
MEL_STEP_S = 0.01  # resemblyzer's mel frames: 10 ms hop, 40 channels
PARTIAL_FRAMES = 160  # GE2E was trained on 1.6 s partials


def webrtc_voiced(audio: np.ndarray, aggressiveness: int = 2, frame_ms: int = 30) -> np.ndarray:
    """Per-frame speech flags (``frame_ms`` frames) from WebRTC's VAD."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad imports the deprecated pkg_resources
        import webrtcvad
    vad = webrtcvad.Vad(int(aggressiveness))
    step = SAMPLE_RATE * frame_ms // 1000
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    n = len(pcm) // step
    return np.array([vad.is_speech(pcm[i * step:(i + 1) * step].tobytes(), SAMPLE_RATE) for i in range(n)],
                    dtype=bool)


class VoiceEmbedder:
    """resemblyzer's VoiceEncoder, loaded once; embeds many fixed-length windows of one recording at a time."""

    def __init__(self, device: str = "cpu", weights: str | None = None, threads: int | None = None) -> None:
        try:
            import torch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from resemblyzer import VoiceEncoder
            if threads:
                torch.set_num_threads(threads)
            self.encoder = VoiceEncoder(device=device, verbose=False, weights_fpath=weights)
        except Exception as exc:
            raise ModelError(f"cannot load resemblyzer's voice encoder (weights: {weights or 'shipped'}, device "
                             f"{device}): {exc}; reinstall resemblyzer or pass a valid weights file") from exc
        self.device = device

    def embed(self, audio: np.ndarray, windows: Sequence[tuple[float, float]], batch: int = 64) -> np.ndarray:
        """One L2-normalised embedding per (start, end) window (all windows have the same length)."""
        import torch
        from resemblyzer import audio as ra

        if not windows:
            return np.zeros((0, 256), dtype=np.float32)
        mel = ra.wav_to_mel_spectrogram(np.asarray(audio, dtype=np.float32))  # (frames, 40), 10 ms hop
        hop = 0.01
        n = max(round((windows[0][1] - windows[0][0]) / hop), 1)
        starts = [min(max(round(s / hop), 0), max(len(mel) - n, 0)) for s, _ in windows]
        stack = np.stack([np.pad(mel[s:s + n], ((0, max(n - len(mel[s:s + n]), 0)), (0, 0))) for s in starts])
        out = []
        with torch.no_grad():
            for i in range(0, len(stack), batch):
                x = torch.from_numpy(stack[i:i + batch]).to(self.encoder.device)
                out.append(self.encoder(x).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def mel(self, audio: np.ndarray) -> np.ndarray:
        """resemblyzer's (frames, 40) mel spectrogram of a 16 kHz signal, one frame per ``MEL_STEP_S``."""
        from resemblyzer import audio as ra

        return ra.wav_to_mel_spectrogram(np.asarray(audio, dtype=np.float32))

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
        """One L2-normalised embedding per mel sequence of any length (e.g. the frames where one local speaker
        talks alone): the mean of its back-to-back 1.6 s partials (the last one ending at its end); a shorter
        sequence is one partial of its own length."""
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

        full, full_owner, short, short_owner = [], [], [], []
        for i, seq in enumerate(seqs):
            n = len(seq)
            if n < PARTIAL_FRAMES:
                short.append(torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32)))
                short_owner.append(i)
                continue
            starts = {*range(0, n - PARTIAL_FRAMES + 1, PARTIAL_FRAMES), n - PARTIAL_FRAMES}
            full += [seq[s:s + PARTIAL_FRAMES] for s in sorted(starts)]
            full_owner += [i] * len(starts)
        out = np.zeros((len(seqs), 256), dtype=np.float32)
        enc = self.encoder
        with torch.no_grad():
            # Equal-length partials go through the encoder as they are (fast); shorter ones packed.
            for i in range(0, len(full), batch):
                x = torch.from_numpy(np.stack(full[i:i + batch]).astype(np.float32)).to(enc.device)
                np.add.at(out, np.array(full_owner[i:i + batch]), enc(x).cpu().numpy())
            for i in range(0, len(short), batch):
                part = short[i:i + batch]
                lengths = torch.tensor([len(c) for c in part])
                packed = pack_padded_sequence(pad_sequence(part, batch_first=True).to(enc.device), lengths,
                                              batch_first=True, enforce_sorted=False)
                _, (hidden, _) = enc.lstm(packed)  # the encoder's own forward, on packed variable lengths
                raw = enc.relu(enc.linear(hidden[-1]))
                emb = raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)
                np.add.at(out, np.array(short_owner[i:i + batch]), emb.cpu().numpy())
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
