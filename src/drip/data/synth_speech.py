"""A synthetic corpus in the Speech Commands v0.02 layout, spoken by Debian's ``espeak-ng``.

For machines without the real data: the ten keywords and ten other words (the ``unknown`` class),
each spoken by many synthetic speakers (accent x voice variant), at random speeds and pitches,
resampled to 16 kHz, placed at a random offset in 1 s and mixed with generated background noise at
a random SNR. ``_background_noise_/`` holds generated noise recordings; ``testing_list.txt`` and
``validation_list.txt`` hold out whole speakers (about 10% each), as the real lists do. It is
clearly not human speech: results on it show that the audio path works, not how DRIP does on
Speech Commands.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm.auto import tqdm

from ..errors import DripDataError
from .audio import SAMPLE_RATE, read_wav_any_rate
from .speech_commands import BACKGROUND, KEYWORDS

UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2")
NOISE_SECONDS = 30


def _coloured_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise of unit peak, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequency = np.maximum(np.fft.rfftfreq(length), 1.0 / length)
    spectrum /= {"white": 1.0, "pink": np.sqrt(frequency), "brown": frequency}[kind]
    noise = np.fft.irfft(spectrum, length)
    return noise / np.abs(noise).max()


def _hum(length: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum with harmonics over pink noise: a machine-room background."""
    t = np.arange(length) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0])
    tone = sum(np.sin(2 * np.pi * base * k * t) / k for k in range(1, 6))
    mixed = tone / np.abs(tone).max() + 0.5 * _coloured_noise("pink", length, rng)
    return mixed / np.abs(mixed).max()


def _write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(SAMPLE_RATE)
        clip.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _speak(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """``word`` spoken by espeak-ng, as 16 kHz float samples with silence trimmed."""
    path = workdir / f"{word}-{voice}-{speed}-{pitch}.wav"
    command = ["espeak-ng", "-w", str(path), "-v", voice, "-s", str(speed), "-p", str(pitch), word]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise DripDataError(f"espeak-ng failed for {word!r} with voice {voice}: {result.stderr.strip()}")
    samples, rate = read_wav_any_rate(path)
    path.unlink()
    gcd = np.gcd(rate, SAMPLE_RATE)
    samples = resample_poly(samples, SAMPLE_RATE // gcd, rate // gcd)
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def _place(speech: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speech at a random offset in 1 s over a random 1 s of ``noise`` at 5-30 dB SNR."""
    speech = speech[:SAMPLE_RATE] * rng.uniform(0.3, 0.9) / max(np.abs(speech).max(), 1e-9)
    clip = np.zeros(SAMPLE_RATE)
    start = rng.integers(0, SAMPLE_RATE - len(speech) + 1)
    clip[start : start + len(speech)] = speech
    background = noise[(offset := rng.integers(0, len(noise) - SAMPLE_RATE)) : offset + SAMPLE_RATE]
    snr_db = rng.uniform(5, 30)
    speech_power = np.mean(speech**2)
    scale = np.sqrt(speech_power / (np.mean(background**2) * 10 ** (snr_db / 10)))
    return clip + scale * background


def synthesize_speech_commands(
    out_dir: Path, *, per_word: int = 200, seed: int = 0, workers: int = 2, progress: bool = True
) -> Path:
    """Write ``per_word`` clips of each of the 20 words in the v0.02 layout into ``out_dir``."""
    if shutil.which("espeak-ng") is None:
        raise DripDataError(
            "espeak-ng is not installed: run `make synth-speech` or `apt-get install espeak-ng`"
        )
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    speakers = [f"{accent}+{variant}" for accent in ACCENTS for variant in VARIANTS]
    rng.shuffle(speakers)
    held_out = max(1, len(speakers) // 10)
    testing_speakers = set(speakers[:held_out])
    validation_speakers = set(speakers[held_out : 2 * held_out])
    kinds = ("white", "pink", "brown", "hum")
    noises = {
        kind: (
            _hum(NOISE_SECONDS * SAMPLE_RATE, rng)
            if kind == "hum"
            else _coloured_noise(kind, NOISE_SECONDS * SAMPLE_RATE, rng)
        )
        for kind in kinds
    }
    for kind, noise in noises.items():
        _write_wav(out_dir / BACKGROUND / f"{kind}_noise.wav", 0.5 * noise)
    jobs = []
    for word in (*KEYWORDS, *UNKNOWN_WORDS):
        for index in range(per_word):
            speaker = speakers[(index + rng.integers(len(speakers))) % len(speakers)]
            jobs.append(
                (
                    word,
                    speaker,
                    int(rng.integers(110, 220)),
                    int(rng.integers(20, 80)),
                    kinds[rng.integers(len(kinds))],
                    int(rng.integers(2**31)),
                    index,
                )
            )
    testing, validation = [], []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, workers)) as pool:

        def render(job: tuple) -> str:
            word, speaker, speed, pitch, kind, clip_seed, index = job
            clip = _place(
                _speak(word, speaker, speed, pitch, Path(tmp)), noises[kind], np.random.default_rng(clip_seed)
            )
            speaker_id = hashlib.sha1(speaker.encode()).hexdigest()[:8]
            # The clip's index makes the name unique within its word (a seed's digits did not).
            relative = f"{word}/{speaker_id}_nohash_{index:05d}.wav"
            _write_wav(out_dir / relative, clip)
            return relative

        for job, relative in zip(
            jobs, tqdm(pool.map(render, jobs), total=len(jobs), desc="espeak-ng", disable=not progress)
        ):
            if job[1] in testing_speakers:
                testing.append(relative)
            elif job[1] in validation_speakers:
                validation.append(relative)
    (out_dir / "testing_list.txt").write_text("".join(f"{p}\n" for p in sorted(testing)))
    (out_dir / "validation_list.txt").write_text("".join(f"{p}\n" for p in sorted(validation)))
    (out_dir / "README.txt").write_text(
        "Synthetic Speech Commands v0.02-style corpus made by drip with espeak-ng; not human speech.\n"
    )
    return out_dir
