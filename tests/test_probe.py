"""`donors plan --probe`: before any training, whether each base model can read the study's format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from donors import api
from donors.probe import probe_advice

pytestmark = pytest.mark.slow  # trains or scores a real model

PROBE_CONFIG = {
    "name": "probe",
    "models": ["smollm2-135m"],
    "tasks": ["number_words", "cldr_continent"],
    "languages": ["en", "de"],
    "seeds": [17],
    "eval": {"chat_template": False},
    "train": {"chat_template": False},
}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("probe")
    path = directory / "probe.yaml"
    path.write_text(yaml.safe_dump({**PROBE_CONFIG, "output_dir": str(directory / "study")}))
    return path


def test_the_probe_shows_smollm2_cannot_read_letters_and_names_the_remedy(config_path):
    probe = api.probe_study(config_path, 8)
    assert set(probe["format"]) == {"lettered", "continuation"} and (probe["n"] == 8).all()
    lettered, continuation = probe[probe["format"] == "lettered"], probe[probe["format"] == "continuation"]
    assert lettered["collapsed"].all() and (lettered["top_share"] == 1.0).all()
    assert not continuation["collapsed"].any()
    # On a gold-balanced probe a one-letter answerer scores exactly chance.
    assert lettered["accuracy"].tolist() == pytest.approx(lettered["chance"].tolist())
    assert probe["debiased"].between(0, 1).all()
    (advice,) = probe_advice(probe, "lettered")
    assert advice.startswith("WARNING: smollm2-135m") and "set eval.prompt_format: continuation" in advice
    (fine,) = probe_advice(probe, "continuation")
    assert "no target collapsed in the continuation format" in fine


def test_plan_probe_through_the_installed_command(config_path):
    command = subprocess.run(
        [str(Path(sys.executable).parent / "donors"), "plan", str(config_path), "--probe", "4"], capture_output=True, text=True, timeout=600
    )
    assert command.returncode == 0, command.stderr
    assert "gold-balanced items per target" in command.stdout and "set eval.prompt_format: continuation" in command.stdout
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "donors"), "plan", str(config_path), "--probe", "0"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "--probe" in refused.stderr
