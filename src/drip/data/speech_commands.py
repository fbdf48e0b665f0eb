"""Speech Commands v0.02 as the MLPerf Tiny keyword-spotting task: 12 classes of 49x10 MFCC.

On disk: one folder per word of 1 s, 16 kHz, 16-bit WAV clips, ``_background_noise_/`` with long
noise recordings, and ``validation_list.txt`` / ``testing_list.txt`` naming clips by relative path.
Classes: the ten keywords, ``silence`` and ``unknown``. ``unknown`` is every other word, subsampled
(seeded) to the size of an average keyword class; ``silence`` is as many 1 s crops of the background
noise at random gains, training crops from the first 80% of each recording and test crops from the
last 20%. The training data are all clips not in the testing list (the validation list included:
drip's Training Phase makes its own validation split); the test set is the testing list.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DripDataError
from .audio import SAMPLE_RATE, fit_length, mfcc, read_wav
from .base import DataSplits, LabelledData
from .download import download

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASS_NAMES = (*KEYWORDS, "silence", "unknown")
SILENCE, UNKNOWN = len(KEYWORDS), len(KEYWORDS) + 1
BACKGROUND = "_background_noise_"
URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
ARCHIVE = "speech_commands_v0.02.tar.gz"
# SHA-256 of the v0.02 archive as torchaudio's SPEECHCOMMANDS dataset records it.
ARCHIVE_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
TRAIN_NOISE_SHARE = 0.8


def _read_list(folder: Path, name: str) -> set[str]:
    path = folder / name
    if not path.is_file():
        raise DripDataError(f"{path}: missing (a Speech Commands v0.02 folder has {name})")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _silence(noise: list[np.ndarray], count: int, test: bool, rng: np.random.Generator) -> np.ndarray:
    """``count`` 1 s crops of background noise at random gains (train / test parts kept apart)."""
    usable = []
    for recording in noise:
        cut = int(TRAIN_NOISE_SHARE * len(recording))
        part = recording[cut:] if test else recording[:cut]
        if len(part) >= SAMPLE_RATE:
            usable.append(part)
    if not usable:
        raise DripDataError(
            f"{BACKGROUND}: no recording long enough for 1 s {'test' if test else 'training'} crops"
        )
    crops = np.empty((count, SAMPLE_RATE), dtype=np.float32)
    for i in range(count):
        part = usable[rng.integers(len(usable))]
        start = rng.integers(0, len(part) - SAMPLE_RATE + 1)
        crops[i] = part[start : start + SAMPLE_RATE] * rng.uniform(0.0, 1.0)
    return crops


# Clips per MFCC call: its float64 frames and spectra of all 38k training clips at once would
# take about 25 GB.
_CHUNK = 1024


def _features(paths: list[Path], progress: bool, desc: str) -> np.ndarray:
    parts = []
    with tqdm(total=len(paths), desc=desc, disable=not progress) as bar:
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start : start + _CHUNK]
            parts.append(mfcc(np.stack([fit_length(read_wav(p)) for p in chunk])))
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.empty((0, 49, 10), dtype=np.float32)


def _split(
    by_class: dict[int, list[Path]],
    noise: list[np.ndarray],
    test: bool,
    rng: np.random.Generator,
    progress: bool,
) -> LabelledData:
    keyword_sizes = [len(by_class.get(c, [])) for c in range(len(KEYWORDS))]
    typical = max(1, round(np.mean(keyword_sizes)))
    unknown = sorted(by_class.get(UNKNOWN, []))
    if len(unknown) > typical:
        unknown = [unknown[i] for i in np.sort(rng.choice(len(unknown), typical, replace=False))]
    paths = [p for c in range(len(KEYWORDS)) for p in sorted(by_class.get(c, []))] + unknown
    labels = [c for c in range(len(KEYWORDS)) for _ in by_class.get(c, [])] + [UNKNOWN] * len(unknown)
    words = _features(paths, progress, "speech commands: test" if test else "speech commands: train")
    silence = mfcc(_silence(noise, typical, test, rng))
    x = torch.from_numpy(np.concatenate([words, silence])).unsqueeze(1)
    y = torch.tensor(labels + [SILENCE] * typical, dtype=torch.int64)
    return LabelledData("speech-commands", x, y, len(CLASS_NAMES), CLASS_NAMES)


def load_speech_commands(folder: Path, *, seed: int = 0, progress: bool = True) -> DataSplits:
    """The 12-class keyword-spotting task from a Speech Commands v0.02 folder (see module docs)."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / BACKGROUND).is_dir():
        raise DripDataError(
            f"{folder}: no Speech Commands v0.02 here (expected word folders and {BACKGROUND}/); "
            "run `drip data fetch speech-commands`, or `drip data synth-speech-commands` for a synthetic one"
        )
    testing = _read_list(folder, "testing_list.txt")
    _read_list(folder, "validation_list.txt")  # present in the layout; its clips train here
    splits: dict[bool, dict[int, list[Path]]] = {False: {}, True: {}}
    for word_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")):
        label = KEYWORDS.index(word_dir.name) if word_dir.name in KEYWORDS else UNKNOWN
        for clip in sorted(word_dir.glob("*.wav")):
            is_test = f"{word_dir.name}/{clip.name}" in testing
            splits[is_test].setdefault(label, []).append(clip)
    noise = [read_wav(p) for p in sorted((folder / BACKGROUND).glob("*.wav"))]
    if not noise:
        raise DripDataError(f"{folder / BACKGROUND}: no WAV recordings for the silence class")
    rng = np.random.default_rng(seed)
    return DataSplits(
        train=_split(splits[False], noise, False, rng, progress),
        test=_split(splits[True], noise, True, rng, progress),
    )


def fetch_speech_commands(folder: Path, *, log=print) -> Path:
    """Download and unpack the official v0.02 archive into ``folder`` (SHA-256 checked).

    The archive is unpacked into a scratch folder and moved into place last, so a crash midway
    leaves no half-unpacked corpus that would look complete.
    """
    folder = Path(folder)
    if (folder / "testing_list.txt").is_file() and (folder / BACKGROUND).is_dir():
        log(f"Speech Commands already in {folder}")
        return folder
    archive = download(URL, folder / ARCHIVE, sha256=ARCHIVE_SHA256, timeout_s=120)
    scratch = folder / ".unpacking"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DripDataError(f"{archive}: cannot unpack: {err}") from None
    for entry in sorted(scratch.iterdir(), key=lambda p: p.name == "testing_list.txt"):
        os.replace(entry, folder / entry.name)
    scratch.rmdir()
    log(f"Speech Commands: unpacked {archive} into {folder}")
    return folder
