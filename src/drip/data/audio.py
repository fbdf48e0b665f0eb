"""Audio features for keyword spotting: 16-bit PCM WAV reading and MFCC, in numpy and scipy.

The MFCC follows the classic recipe (the one ``python_speech_features`` implements, against which
``tests/test_data_speech.py`` checks it): frames with a Hann window, power spectrum |FFT|^2 / nfft,
triangular mel filters on FFT bins (HTK mel scale), natural log, orthonormal DCT-II. The MLPerf Tiny
keyword-spotting input is 49 frames x 10 coefficients of 1 s at 16 kHz: 40 ms windows, 20 ms hop,
40 mel bands over 20-4000 Hz.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from ..errors import DripDataError

SAMPLE_RATE = 16_000


def read_wav_any_rate(path: Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit PCM WAV file as float32 samples in [-1, 1), and its sample rate."""
    try:
        with wave.open(str(path), "rb") as clip:
            if clip.getnchannels() != 1 or clip.getsampwidth() != 2:
                raise DripDataError(
                    f"{path}: {clip.getnchannels()} channel(s) of {8 * clip.getsampwidth()} bit, "
                    "expected mono 16-bit PCM"
                )
            rate = clip.getframerate()
            frames = clip.readframes(clip.getnframes())
    except (wave.Error, EOFError) as err:
        raise DripDataError(f"{path}: not a readable WAV file: {err}") from None
    if len(frames) % 2:
        raise DripDataError(f"{path}: truncated sample data")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0, rate


def read_wav(path: Path) -> np.ndarray:
    """A mono 16-bit PCM WAV file at 16 kHz as float32 samples in [-1, 1)."""
    samples, rate = read_wav_any_rate(path)
    if rate != SAMPLE_RATE:
        raise DripDataError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE}")
    return samples


def fit_length(samples: np.ndarray, length: int = SAMPLE_RATE) -> np.ndarray:
    """Zero-pad at the end or cut to ``length`` samples (1 s at 16 kHz)."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(bands: int, nfft: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Triangular filters ``(bands, nfft // 2 + 1)`` with corners on FFT bins, equally spaced in mel."""
    corners = _mel_to_hz(np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), bands + 2))
    bins = np.floor((nfft + 1) * corners / sample_rate).astype(int)
    filters = np.zeros((bands, nfft // 2 + 1))
    for band in range(bands):
        left, centre, right = bins[band : band + 3]
        rising = np.arange(left, centre)
        falling = np.arange(centre, right)
        filters[band, rising] = (rising - left) / max(centre - left, 1)
        filters[band, falling] = (right - falling) / max(right - centre, 1)
    return filters


def mfcc(
    signals: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    window_s: float = 0.040,
    hop_s: float = 0.020,
    bands: int = 40,
    coefficients: int = 10,
    low_hz: float = 20.0,
    high_hz: float = 4000.0,
    nfft: int = 1024,
) -> np.ndarray:
    """MFCC of ``signals: (N, samples)``: ``(N, frames, coefficients)``, 49 x 10 for 1 s clips.

    The last frame is zero-padded when the hop does not divide the signal evenly.
    """
    signals = np.atleast_2d(np.asarray(signals, dtype=np.float64))
    window, hop = round(window_s * sample_rate), round(hop_s * sample_rate)
    length = signals.shape[1]
    frames = 1 if length <= window else 1 + int(np.ceil((length - window) / hop))
    padded = np.pad(signals, ((0, 0), (0, (frames - 1) * hop + window - length)))
    index = np.arange(window)[None, :] + hop * np.arange(frames)[:, None]
    framed = padded[:, index] * np.hanning(window)
    power = np.abs(np.fft.rfft(framed, nfft)) ** 2 / nfft
    energies = power @ mel_filterbank(bands, nfft, sample_rate, low_hz, high_hz).T
    energies = np.where(energies == 0, np.finfo(float).eps, energies)
    from scipy.fft import dct  # here: scipy costs every start of drip, and only MFCC needs it

    return dct(np.log(energies), type=2, axis=-1, norm="ortho")[..., :coefficients].astype(np.float32)
