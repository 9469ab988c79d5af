"""The study config documents itself: every field has a description, and docs/config.md is generated from them.

Regenerate the page with ``donors config > docs/config.md`` when a field changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from donors.config import EvalConfig, LoraConfig, RayConfig, StudyConfig, TaskSpec, TrainConfig, config_reference

SECTIONS = (StudyConfig, TaskSpec, LoraConfig, TrainConfig, EvalConfig, RayConfig)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"
DONORS = shutil.which("donors", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("section", SECTIONS, ids=lambda cls: cls.__name__)
def test_every_field_has_a_description(section):
    undocumented = [name for name, field in section.model_fields.items() if not (field.description or "").strip()]
    assert not undocumented, f"{section.__name__} fields without a description: {', '.join(undocumented)}"


def test_reference_lists_every_field():
    reference = config_reference()
    prefixes = {StudyConfig: "", TaskSpec: "tasks[].", LoraConfig: "lora.", TrainConfig: "train.", EvalConfig: "eval.", RayConfig: "ray."}
    for section, prefix in prefixes.items():
        for name, field in section.model_fields.items():
            row = next((line for line in reference.splitlines() if line.startswith(f"| `{prefix}{name}` |")), None)
            assert row is not None, f"no row for {prefix}{name}"
            assert field.description.replace("|", "\\|") in row


def test_docs_page_is_the_generated_reference():
    assert DOCS.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md differs from the field descriptions in donors/config.py; regenerate it: donors config > docs/config.md"
    )


@pytest.mark.skipif(DONORS is None, reason=f"no donors console script in {Path(sys.executable).parent}")
def test_console_command_prints_the_reference():
    done = subprocess.run([DONORS, "config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == config_reference()
