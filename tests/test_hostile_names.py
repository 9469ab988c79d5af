"""Hostile names (issue 17, items 6, 10 and 11): every name that becomes a folder of the study is checked when the
config is loaded, and every model entry is resolved before any data is loaded or anything is written.

Model-free and network-free: fake model directories and a fake Hugging Face cache under tmp_path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from donors.config import MAX_COMPONENT, ConfigError, config_from_dict, load_config, path_component

REPO = Path(__file__).resolve().parents[1]


def study(**fields) -> dict:
    return {"models": ["smollm2-135m"], "tasks": ["number_words"], "languages": ["de"], "seeds": [17], **fields}


# Item 6: names that become path components


@pytest.mark.parametrize(
    "name",
    [
        "../../../../escaped",
        "..",
        ".",
        "/etc",
        "a/b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a b",
        "",
        "-leading-dash",
        ".hidden",
        "=cmd",
        "x" * 65,
        "näme",
    ],
)
def test_a_task_name_that_is_no_plain_folder_name_is_refused_at_load(tmp_path, name):
    with pytest.raises(ConfigError) as error:
        config_from_dict(study(tasks=[{"name": name, "options": {"source": "files"}}]), source="study.yaml")
    message = str(error.value)
    assert "study.yaml" in message and "tasks.0.name" in message
    assert "letters A-Z a-z, digits, '_', '-' and '.'" in message  # the fix: the characters allowed
    assert len(message) < 1000  # the bad value is quoted, bounded


def test_the_escaping_task_name_of_the_probe_never_reaches_a_path(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(
        "models: [smollm2-135m]\ntasks:\n  - name: ../../../../escaped\n    options: {source: files, path: x}\nlanguages: [de]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"(?s)study\.yaml.*tasks\.0\.name.*a task name is a folder of the study"):
        load_config(config)


@pytest.mark.parametrize("name", ["number_words", "arc_challenge", "my-task.v2", "T1", "x" * 64])
def test_plain_task_names_load(name):
    assert config_from_dict(study(tasks=[name])).task_names == (name,)


def test_task_names_that_differ_only_in_case_are_refused():
    with pytest.raises(ConfigError, match=r"tasks 'Quiz' and 'quiz' differ only in case"):
        config_from_dict(study(tasks=["Quiz", "quiz"]))


def test_language_codes_cannot_be_paths():
    for code in ("..", "../de", "de/", "DE", "d\x00"):
        with pytest.raises(ConfigError, match=r"languages.*not a language code"):
            config_from_dict(study(languages=[code]))


def test_every_shipped_config_and_registered_task_name_still_loads():
    from donors.config import TaskSpec
    from donors.tasks import task_names

    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)
    for name in task_names():
        TaskSpec(name=name)


SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@pytest.mark.parametrize(
    "model",
    ["..", ".", "/", "/etc", "../../../../escaped", "./my model", "~/models/llama", "a\\b", "ünïcödé/mödel", "x" * 2000, "a" * 300 + "/b"],
)
def test_a_model_entry_becomes_one_safe_folder_inside_the_study(tmp_path, model):
    folder = path_component(model)
    assert SAFE.fullmatch(folder) and len(folder) <= MAX_COMPONENT
    assert (tmp_path / folder).resolve().parent == tmp_path.resolve()


def test_plain_model_entries_keep_the_folder_they_always_had():
    assert path_component("smollm2-135m") == "smollm2-135m"
    assert path_component("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen__Qwen2.5-0.5B-Instruct"
    assert path_component("/models/llama") == "__models__llama"
    # Cut names keep a hash of the whole entry: two entries never share a folder.
    assert path_component("./my model") != path_component("./my_model") != path_component("my_model")
    assert path_component("..") != path_component(".")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("", "a model entry is empty"),
        ("   ", "a model entry is empty"),
        (" smollm2-135m", "has spaces at its ends"),
        ("org/na\x00me", r"control characters \(U\+0000\)"),
        ("/models/a\nb", r"control characters \(U\+000A\)"),
        ("m" * 5000, "5,000 characters long"),
    ],
)
def test_model_entries_that_cannot_be_a_model_name_are_refused_at_load(model, message):
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict(study(models=[model]))
    assert "models" in str(error.value) and len(str(error.value)) < 1500


# Item 10: two names for one model


@pytest.mark.parametrize(
    "models",
    [
        ["smollm2-135m", "smollm2-135M"],
        ["Org/Name", "org/name"],
        ["org/name", "org__name"],
    ],
)
def test_two_spellings_of_one_model_are_refused_at_load_naming_both(models):
    with pytest.raises(ConfigError) as error:
        config_from_dict(study(models=models))
    assert all(repr(m) in str(error.value) for m in models)
    assert "keep one of them" in str(error.value)
