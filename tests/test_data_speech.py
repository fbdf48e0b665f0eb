"""Speech Commands: MFCC against python_speech_features, the folder layout, the 12 classes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures import write_speech_corpus, write_wav

from drip.data import load_dataset
from drip.data.audio import mfcc, read_wav
from drip.data.speech_commands import CLASS_NAMES, KEYWORDS, SILENCE, UNKNOWN
from drip.errors import DripDataError


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(16000)
    ours = mfcc(signal[None])[0]
    reference = psf.mfcc(
        signal,
        16000,
        winlen=0.04,
        winstep=0.02,
        numcep=10,
        nfilt=40,
        nfft=1024,
        lowfreq=20,
        highfreq=4000,
        preemph=0,
        ceplifter=0,
        appendEnergy=False,
        winfunc=np.hanning,
    )
    assert ours.shape == reference.shape == (49, 10)
    assert np.allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_folder_layout_gives_twelve_classes_and_the_official_test_split(tmp_path):
    write_speech_corpus(tmp_path)
    splits = load_dataset("speech-commands", tmp_path)
    train, test = splits.train, splits.test
    assert train.x.shape[1:] == (1, 49, 10) and train.num_classes == 12 == len(CLASS_NAMES)
    # 2 of 3 clips per keyword train (the validation list included), 1 tests.
    assert np.bincount(train.y.numpy(), minlength=12)[: len(KEYWORDS)].tolist() == [2] * 10
    assert np.bincount(test.y.numpy(), minlength=12)[: len(KEYWORDS)].tolist() == [1] * 10
    # unknown: the other words, cut to a keyword class's size; silence: as many noise crops.
    assert int((train.y == UNKNOWN).sum()) == 2 and int((train.y == SILENCE).sum()) == 2
    assert np.isfinite(train.x.numpy()).all()


def test_bad_files_name_the_file(tmp_path):
    write_speech_corpus(tmp_path)
    bad = tmp_path / "yes" / "spk2_nohash_0.wav"
    write_wav(bad, np.zeros(8000), rate=8000)
    with pytest.raises(DripDataError, match=r"spk2_nohash_0\.wav: sample rate 8000 Hz"):
        load_dataset("speech-commands", tmp_path)
    bad.write_bytes(b"RIFF0000WAVEfmt garbage")
    with pytest.raises(DripDataError, match=r"spk2_nohash_0\.wav: not a readable WAV"):
        load_dataset("speech-commands", tmp_path)
    data = bad.parent / "spk1_nohash_0.wav"
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(DripDataError, match="truncated"):
        read_wav(data)
    (tmp_path / "testing_list.txt").unlink()
    with pytest.raises(DripDataError, match=r"testing_list\.txt: missing"):
        load_dataset("speech-commands", tmp_path)
    shutil.rmtree(tmp_path / "_background_noise_")
    with pytest.raises(DripDataError, match="synth-speech-commands"):
        load_dataset("speech-commands", tmp_path)


def test_synthetic_corpus_in_the_real_layout(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make synth-speech installs it)")
    from drip.data.synth_speech import synthesize_speech_commands

    synthesize_speech_commands(tmp_path, per_word=3, progress=False)
    words = [p for p in tmp_path.glob("*/*.wav") if p.parent.name != "_background_noise_"]
    assert len(words) == 20 * 3  # every clip kept its own file
    assert len(read_wav(next((tmp_path / "marvin").glob("*.wav")))) == 16000
    splits = load_dataset("speech-commands", tmp_path, progress=False)
    labels = torch.cat([splits.train.y, splits.test.y])
    assert int((labels < 10).sum()) == 10 * 3  # every keyword clip, in train or test
    assert splits.train.x.shape[1:] == (1, 49, 10)


def test_synthesis_without_espeak_is_a_clear_error(tmp_path, monkeypatch):
    from drip.data import synth_speech

    monkeypatch.setattr(synth_speech.shutil, "which", lambda name: None)
    with pytest.raises(DripDataError, match="make synth-speech"):
        synth_speech.synthesize_speech_commands(tmp_path)


def test_fetch_unpacks_the_archive_into_place(tmp_path, monkeypatch):
    import tarfile

    from drip.data import speech_commands

    corpus = tmp_path / "corpus"
    write_speech_corpus(corpus, per_word=2)
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(corpus.iterdir()):
            tar.add(entry, arcname=f"./{entry.name}")
    monkeypatch.setattr(speech_commands, "download", lambda url, path, **kwargs: archive)
    folder = speech_commands.fetch_speech_commands(tmp_path / "data", log=lambda message: None)
    assert not (folder / ".unpacking").exists()
    assert len(load_dataset("speech-commands", folder).test) > 0
