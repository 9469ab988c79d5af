"""The paper preset, and `donors plan`: job counts, tokens and GPU-hours without running anything."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from donors import api
from donors.cli import app
from donors.config import LORA_TARGETS, ConfigError, load_config
from donors.grid import size_from_name
from donors.plan import CHAT_TEMPLATE_TOKENS, DEFAULT_MFU, DEFAULT_TFLOPS, gpu_hours, parameter_count, plan

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper.yaml"
DEMO = REPO / "configs" / "demo.yaml"

PAPER_MODELS = (
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "google/gemma-3-1b-it",
    "google/gemma-3-4b-it",
)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the plan tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_paper_preset_is_the_published_protocol():
    config = load_config(PAPER)
    assert config.name == "paper" and config.output_dir == Path.cwd() / "studies" / "paper"
    assert config.models == PAPER_MODELS
    assert config.task_names == ("arc_challenge", "global_mmlu", "hellaswag", "truthfulqa")
    assert config.languages == ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
    assert config.seeds == (17, 42, 101)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (32, 64, 0.0)
    assert config.lora.target_modules == LORA_TARGETS == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    train = config.train
    assert (train.epochs, train.warmup_ratio, train.learning_rate) == (3, 0.1, 5e-5)
    assert (train.validation_fraction, train.split_seed, train.keep_best) == (0.1, 42, True)
    assert train.chat_template is False and train.max_length == 256 and train.max_items is None
    lengths = {task: config.train_config_for(task).max_length for task in config.task_names}
    assert lengths == {"arc_challenge": 256, "global_mmlu": 512, "hellaswag": 512, "truthfulqa": 128}
    assert config.eval.chat_template is True and config.eval.metric == "acc_norm" and config.eval.max_items is None
    assert config.dtype == "bfloat16"


def test_paper_plan_counts_jobs_per_model_and_in_total(offline):
    p = plan(load_config(PAPER))
    assert [m.model for m in p.models] == list(PAPER_MODELS)
    for m in p.models:
        assert (m.train_jobs, m.model_states, m.eval_jobs) == (44 * 3, 1 + 44 * 3, 133 * 44)
        assert m.params_from == "published"
    assert (p.sources, p.targets, p.seeds) == (44, 44, 3)
    assert (p.train_jobs, p.model_states, p.eval_jobs) == (1_188, 9 * 133, 9 * 133 * 44)
    assert p.eval_jobs == 52_668


def test_paper_plan_falls_back_to_published_sizes_and_says_so(offline):
    p = plan(load_config(PAPER))
    sizes = {t.task: t for t in p.tasks}
    assert all(t.estimated for t in p.tasks) and p.estimated
    assert (sizes["arc_challenge"].train_items, sizes["arc_challenge"].test_items) == (300 * 11, 400 * 11)
    assert sizes["global_mmlu"].train_items == 215 * 11
    # ARC: 300 typical characters / 4 = 75 tokens to train on, plus the chat template when scored.
    assert sizes["arc_challenge"].train_tokens == 300 * 11 * 75
    assert sizes["arc_challenge"].test_tokens == 400 * 11 * (75 + CHAT_TEMPLATE_TOKENS)
    notes = "\n".join(p.assumptions())
    assert "estimate: arc_challenge" in notes and "hub data, not fetched" in notes and "characters / 4" in notes


def test_tokens_flops_and_gpu_hours_follow_the_stated_formulas(offline):
    p = plan(load_config(PAPER))
    train_tokens_per_seed = sum(t.train_tokens for t in p.tasks) * 3
    tokens_per_state = sum(t.test_tokens for t in p.tasks)
    llama = p.models[0]
    assert llama.params_billions == 1.24
    assert llama.train_tokens == pytest.approx(train_tokens_per_seed * 3)
    assert llama.eval_tokens == pytest.approx(tokens_per_state * 133)
    assert llama.train_flops == pytest.approx(4 * 1.24e9 * llama.train_tokens)
    assert llama.eval_flops == pytest.approx(2 * 1.24e9 * llama.eval_tokens)
    assert llama.train_gpu_hours == pytest.approx(llama.train_flops / (DEFAULT_TFLOPS * 1e12 * DEFAULT_MFU) / 3600)
    assert p.gpu_hours == pytest.approx(sum(m.train_gpu_hours + m.eval_gpu_hours for m in p.models))


def test_gpu_hours_by_hand():
    # 1B parameters x 1B tokens of LoRA training = 4e18 FLOPs; 100 TFLOP/s at 50% is 5e13 FLOP/s: 80,000 s.
    assert gpu_hours(4e18, tflops=100, mfu=0.5) == pytest.approx(80_000 / 3600)
    assert gpu_hours(4e18, tflops=989, mfu=0.4) == pytest.approx(4e18 / 395.6e12 / 3600)
    with pytest.raises(ValueError, match="mfu"):
        gpu_hours(1.0, tflops=989, mfu=0)


def test_throughput_options_scale_the_hours(offline):
    base = api.plan_study(PAPER)
    faster = api.plan_study(PAPER, tflops=2 * DEFAULT_TFLOPS, mfu=DEFAULT_MFU / 2)
    slower = api.plan_study(PAPER, mfu=DEFAULT_MFU / 4)
    assert faster.gpu_hours == pytest.approx(base.gpu_hours)
    assert slower.gpu_hours == pytest.approx(4 * base.gpu_hours)


def test_demo_plan_counts_from_its_embedded_data():
    p = plan(load_config(DEMO))
    (m,) = p.models
    assert (m.train_jobs, m.model_states, m.eval_jobs) == (6, 7, 42)
    assert (m.params_billions, m.params_from) == (0.135, "name")
    assert not p.estimated
    for t in p.tasks:
        # max_items caps the items: 96 train and 32 test per language, 3 languages.
        assert (t.train_items, t.test_items, t.note) == (288, 96, "from the data")
        assert 0 < t.train_tokens / t.train_items < 256
    assert m.train_tokens == pytest.approx(sum(t.train_tokens for t in p.tasks) * 2)  # 2 epochs, 1 seed
    assert m.eval_tokens == pytest.approx(sum(t.test_tokens for t in p.tasks) * 7)


def test_unreadable_local_copy_of_a_benchmark_falls_back_with_the_reason(tmp_path, offline):
    config = {
        "output_dir": str(tmp_path / "s"),
        "models": ["some/unsized-model"],
        "languages": ["en"],
        "tasks": [{"name": "arc_challenge", "options": {"data_files": str(tmp_path / "missing" / "{language}_{split}.jsonl")}}],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    p = plan(load_config(path))
    (task,) = p.tasks
    assert task.estimated and "local data unreadable" in task.note and (task.train_items, task.test_items) == (300, 400)
    (m,) = p.models
    assert m.params_from == "unknown" and math.isnan(m.gpu_hours)
    assert any("unknown: some/unsized-model" in line for line in p.assumptions())


def test_parameter_counts_from_the_table_then_the_name():
    assert parameter_count("Qwen/Qwen2.5-7B-Instruct") == (7.62, "published")
    assert parameter_count("google/gemma-3-4b-it") == (4.3, "published")
    assert parameter_count("smollm2-135m") == (0.135, "name")
    assert parameter_count("org/Mistral-7B-v0.3") == (7.0, "name")
    size, where = parameter_count("/models/my-checkpoint")
    assert math.isnan(size) and where == "unknown"


def test_parameter_count_is_not_the_published_model_size():
    # The published schema's model_size is the size the name states; FLOPs scale with the real count.
    assert size_from_name("meta-llama/Llama-3.2-1B-Instruct") == 1.0
    assert parameter_count("meta-llama/Llama-3.2-1B-Instruct") == (1.24, "published")


def test_plan_rejects_unusable_throughput_before_reading_any_task():
    config = load_config(DEMO)
    for tflops, mfu in ((0, 0.4), (989, 0), (989, 1.5)):
        with pytest.raises(ConfigError, match="--tflops must be > 0 and --mfu in"):
            plan(config, tflops=tflops, mfu=mfu)


def test_cli_prints_the_plan_offline(offline):
    result = CliRunner().invoke(app, ["plan", str(PAPER), "--tflops", "312", "--mfu", "0.5"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "Llama-3.2-1B-Instruct",
        "gemma-3-4b-it",
        "1,188",
        "1,197",
        "52,668",
        "5,852",
        "total GPU-h",
        "312 TFLOP/s x 50% utilisation",
        "estimate: hellaswag",
        "partly estimated",
    ):
        assert text in out, text


def test_sources_choose_what_is_trained_and_plan_and_status_count_only_that(tmp_path):
    from donors.grid import Cell
    from donors.jobs import eval_jobs, train_jobs

    data = yaml.safe_load(DEMO.read_text())
    data["output_dir"] = str(tmp_path / "study")
    full = plan(config_from(data))
    data["sources"] = ["number_words/de", "cldr_continent/*"]
    chosen = config_from(data)
    assert chosen.source_cells("smollm2-135m") == [Cell("number_words", "de")] + [
        Cell("cldr_continent", lang) for lang in ("de", "es", "fr")
    ]
    assert len(train_jobs(chosen)) == 4 and len(eval_jobs(chosen)) == 5 * 6  # every target is still scored
    p = plan(chosen)
    (m,) = p.models
    assert (m.train_jobs, m.model_states, m.eval_jobs) == (4, 5, 30)
    per_source = {t.task: t.train_tokens / 3 for t in full.tasks}
    assert m.train_tokens == pytest.approx((per_source["number_words"] + 3 * per_source["cldr_continent"]) * 2)
    status = api.study_status(chosen)
    assert (status.train_pending, status.eval_pending) == (4, 30)
    # Per model, as `plan --budget` writes them; a model left out trains nothing.
    data["sources"] = {"smollm2-135m": ["de"]}
    assert [str(c) for c in config_from(data).source_cells("smollm2-135m")] == ["number_words/de", "cldr_continent/de"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["number_words/hi"], r"sources: 'number_words/hi' match no cell of the grid; its cells are number_words/de"),
        (["arc/*", "de"], r"'arc/\*' match no cell"),
        ({"other-model": ["de"]}, r"sources names model\(s\) 'other-model' that are not in models"),
    ],
)
def test_sources_that_name_no_cell_of_the_grid_are_refused_with_the_cells(tmp_path, sources, message):
    data = yaml.safe_load(DEMO.read_text())
    data["sources"] = sources
    with pytest.raises(ConfigError, match=message):
        config_from(data)


def config_from(data: dict):
    from donors.config import config_from_dict

    return config_from_dict(data)
