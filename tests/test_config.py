from pathlib import Path

import pytest

from donors.config import ConfigError, config_from_dict, load_config

GOOD = """
name: t
output_dir: {out}
models: [smollm2-135m]
tasks: [number_words]
languages: [en, de]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_published_protocol(tmp_path):
    config = load_config(write(tmp_path, GOOD.format(out=tmp_path / "s")))
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (32, 64, 0.0)
    assert config.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert (config.train.epochs, config.train.learning_rate, config.train.warmup_ratio) == (3, 5e-5, 0.1)
    assert (config.train.validation_fraction, config.train.split_seed, config.train.keep_best) == (0.1, 42, True)
    assert config.seeds == (17, 42, 101)
    assert config.train.chat_template is False and config.eval.chat_template is True
    assert config.trust_remote_code is False


@pytest.mark.parametrize(
    "bad, field, hint",
    [
        ("lora: {r: 0}", "lora.r", "greater than 0"),
        ("train: {learning_rate: -1}", "train.learning_rate", "-1"),
        ("train: {epocs: 3}", "train.epocs", "unknown field"),
        ("languages: [english]", "languages", "not a language code"),
        ("seeds: []", "seeds", "at least one"),
        ("train: {batch_size: 8, micro_batch_size: 3}", "train", "must divide"),
        ("eval: {prompt_format: cloze}", "eval.prompt_format", "lettered"),
    ],
)
def test_bad_config_names_file_field_value_and_fix(tmp_path, bad, field, hint):
    text = GOOD.format(out=tmp_path / "s")
    key = bad.split(":")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith(key + ":")) + "\n" + bad + "\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message and field in message and hint in message


def test_missing_models_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="models: required field is missing"):
        load_config(write(tmp_path, "tasks: [number_words]\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "models: [a\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "models: !!python/object/apply:os.system ['true']\ntasks: [a]\n"))


def test_a_task_can_have_its_own_training_length(tmp_path):
    text = GOOD.format(out=tmp_path / "s").replace("tasks: [number_words]", "tasks: [{name: number_words, max_length: 64}, cldr_continent]")
    config = load_config(write(tmp_path, text))
    assert config.train_config_for("number_words").max_length == 64
    assert config.train_config_for("cldr_continent").max_length == config.train.max_length == 256
    # Tasks without their own length dump as before the option existed: older stores keep their recipe hash.
    plain = load_config(write(tmp_path, GOOD.format(out=tmp_path / "s").replace("[number_words]", "[number_words, cldr_continent]")))
    assert all("max_length" not in task for task in plain.recipe()["tasks"])
    assert config.recipe()["tasks"][0]["max_length"] == 64 and plain.recipe_hash() != config.recipe_hash()
    with pytest.raises(ConfigError, match=r"tasks\.0\.max_length"):
        load_config(write(tmp_path, text.replace("max_length: 64", "max_length: 2")))


def test_training_and_evaluation_formats_must_agree_unless_the_config_says_so():
    base = {"models": ["smollm2-135m"], "tasks": ["number_words"]}
    assert config_from_dict({**base, "eval": {"prompt_format": "continuation"}}).train_format == "continuation"
    with pytest.raises(
        ConfigError, match="train.prompt_format is 'lettered' but eval.prompt_format is 'continuation'.*allow_format_mismatch"
    ):
        config_from_dict({**base, "train": {"prompt_format": "lettered"}, "eval": {"prompt_format": "continuation"}})
    mixed = config_from_dict(
        {**base, "train": {"prompt_format": "lettered", "allow_format_mismatch": True}, "eval": {"prompt_format": "continuation"}}
    )
    assert mixed.train_format == "lettered" and mixed.recipe()["train"]["prompt_format"] == "lettered"
    with pytest.raises(ConfigError, match="eval: .*permutations apply to the lettered format"):
        config_from_dict({**base, "eval": {"prompt_format": "continuation", "permutations": "cyclic"}})
    # Options at their defaults leave the recipe as older stores recorded it.
    assert "prompt_format" not in config_from_dict(base).recipe()["train"] and "permutations" not in config_from_dict(base).recipe()["eval"]
    # Which tasks the analyses call human-translated changes no adapter or score: a study resumes under another list.
    assert config_from_dict({**base, "curated": ["number_words"]}).recipe_hash() == config_from_dict(base).recipe_hash()


def test_an_output_dir_with_other_files_is_refused_and_left_as_it_was(tmp_path):
    from donors import api

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("my own file")
    (folder / "notes.txt").write_text("keep me")
    config = config_from_dict({"output_dir": str(folder), "models": ["smollm2-135m"], "tasks": ["number_words"], "languages": ["en"]})
    with pytest.raises(ConfigError, match=r"already holds files that are not a study's \(notes.txt\)"):
        api.run_study(config, report=False)
    assert (folder / "config.json").read_text() == "my own file" and sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "notes.txt",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "models: [smollm2-135m]\ntasks: [number_words]\nlanguages: [en, no]\n",
            r"languages: got \['en', False\], a boolean.*quote a text \('no'\)",
        ),
        ("models: [smollm2-135m]\ntasks: [number_words]\ntrain: {epochs: true}\n", r"epochs: got True, a boolean"),
        ("models: [smollm2-135m]\ntasks: [number_words]\nseeds: [true]\n", r"seeds: got \[True\], a boolean"),
        ("models: [smollm2-135m]\ntasks: [number_words]\nseeds: [4294967296]\n", r"outside 0 \.\. 2\*\*32 - 1"),
        ("models: [smollm2-135m]\ntasks: [number_words]\nmodels: [gemma3-270m]\n", r"key\(s\) models given twice"),
        ("models: [smollm2-135m]\ntasks: [number_words]\ntrain: {epochs: 2, epochs: 3}\n", r"key\(s\) epochs given twice"),
    ],
)
def test_yaml_surprises_are_refused_with_the_field_and_the_fix(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_config_that_is_not_utf8_or_an_alias_bomb_is_refused_quickly(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: étude\nmodels: [smollm2-135m]\ntasks: [number_words]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 6\); save the file as UTF-8"):
        load_config(latin1)
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in zip("abcdefg", "bcdefgh")
    ]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\nmodels: [smollm2-135m]\ntasks: [number_words]\n")
    with pytest.raises(ConfigError, match="more than 100,000 values once its aliases"):
        load_config(path)
    long_name = {"models": ["smollm2-135m"], "tasks": ["number_words"], "languages": ["x" * 5000]}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(long_name)
    assert len(str(caught.value)) < 1000 and "characters)" in str(caught.value)
