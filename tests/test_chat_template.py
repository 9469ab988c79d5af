"""Chat templates on both paths, on the embedded instruct model (SmolLM2-135M-Instruct).

The published study trained without the template and evaluated with it (lm-eval
``--apply_chat_template``); each path follows its own config switch.
"""

from __future__ import annotations

import math

import pytest

from donors.evaluate.native import score_choices
from donors.models import load_model, load_tokenizer
from donors.tasks.item import Item
from donors.tasks.prompts import (
    ChatTemplateError,
    build_requests,
    continuation_prompt,
    encode_example,
    lettered_prompt,
    render_prompt,
    training_text,
)

pytestmark = pytest.mark.slow  # trains or scores a real model

MODEL = "smollm2-135m"
ITEMS = [
    Item("q1", "toy", "en", "Question: Which planet is closest to the Sun?", ("Venus", "Mercury", "Mars", "Earth"), 1),
    Item("q2", "toy", "en", "Question: How many legs does a spider have?", ("Six", "Four", "Eight", "Ten"), 2),
    Item("q3", "toy", "en", "Question: What is frozen water called?", ("Ice", "Steam", "Sand", "Glass"), 0),
]
TRUTHFUL = Item("t1", "truthfulqa", "en", "Question: Can pigs fly?", ("No", "Yes"), 0, target_text="Question: Can pigs fly?\nAnswer: No")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture
def no_template():
    """The same tokenizer with its chat template taken away, as a base model's would be."""
    bare = load_tokenizer(MODEL)
    bare.chat_template = None
    return bare


def test_chat_prompt_is_the_user_turn_then_the_assistant_header(tokenizer):
    item = ITEMS[0]
    text = render_prompt(item, tokenizer, chat_template=True)
    user = text.index("<|im_start|>user\n")
    assert text.index(item.question) > user
    assert f"{lettered_prompt(item)}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_bare_prompt_is_the_lettered_prompt(tokenizer):
    item = ITEMS[0]
    text = render_prompt(item, tokenizer, chat_template=False)
    assert text == lettered_prompt(item) == f"{item.question}\nA) Venus\nB) Mercury\nC) Mars\nD) Earth\nAnswer:"
    assert "<|im_start|>" not in text


def test_letters_follow_the_assistant_header_without_a_space(tokenizer):
    """As lm-eval: under a chat template the continuation is ``A``, after ``Answer:`` it is `` A``."""
    (chat,) = build_requests(ITEMS[:1], tokenizer, chat_template=True)
    assert tokenizer.decode(chat.context_ids).endswith("<|im_start|>assistant\n")
    assert chat.continuation_texts == ("A", "B", "C", "D")
    assert [tokenizer.decode(c) for c in chat.continuations] == ["A", "B", "C", "D"]
    (bare,) = build_requests(ITEMS[:1], tokenizer, chat_template=False)
    assert tokenizer.decode(bare.context_ids).endswith("\nAnswer:")
    assert [tokenizer.decode(c) for c in bare.continuations] == [" A", " B", " C", " D"]
    assert all(len(c) == 1 for r in (chat, bare) for c in r.continuations)


def test_scoring_runs_with_and_without_the_template():
    model, tokenizer = load_model(MODEL)
    by_setting = {setting: score_choices(model, tokenizer, ITEMS, chat_template=setting, batch_size=2) for setting in (True, False)}
    for predictions in by_setting.values():
        assert [p.item_id for p in predictions] == [i.id for i in ITEMS]
        for p, item in zip(predictions, ITEMS):
            assert len(p.logprobs) == 4 and all(math.isfinite(lp) and lp < 0 for lp in p.logprobs)
            assert p.predicted == max(range(4), key=p.logprobs.__getitem__) and p.gold == item.answer_index
    assert by_setting[True][0].logprobs != by_setting[False][0].logprobs


def test_training_text_follows_train_chat_template(tokenizer):
    item = ITEMS[1]
    prompt, target = training_text(item, tokenizer, prompt_format="lettered", chat_template=False, model_name=MODEL)
    assert (prompt, target) == (lettered_prompt(item), " C")
    prompt, target = training_text(item, tokenizer, prompt_format="lettered", chat_template=True, model_name=MODEL)
    assert prompt == render_prompt(item, tokenizer, chat_template=True) and target == "C"
    for setting in (True, False):
        assert training_text(TRUTHFUL, tokenizer, prompt_format="lettered", chat_template=setting) == ("", TRUTHFUL.target_text)


def test_continuation_training_puts_the_loss_on_exactly_the_option_text(tokenizer):
    """The trained tokens are the gold option's text after ``Answer:``, the same tokens the scorer reads for that choice."""
    item = ITEMS[2]  # gold: "Ice"
    prompt, target = training_text(item, tokenizer, prompt_format="continuation", chat_template=False)
    assert (prompt, target) == (continuation_prompt(item), " Ice") and prompt == "Question: Question: What is frozen water called?\nAnswer:"
    example = encode_example(prompt, target, tokenizer, max_length=256)
    assert tokenizer.decode(example.input_ids[example.loss_start :]) == " Ice"
    assert tokenizer.decode(example.input_ids[: example.loss_start]) == prompt
    (request,) = build_requests([item], tokenizer, chat_template=False, prompt_format="continuation")
    assert request.context_ids == example.input_ids[: example.loss_start]
    assert request.continuations[item.answer_index] == example.input_ids[example.loss_start :]
    # Under a chat template the text follows the assistant header with no space, as the scorer reads it.
    prompt, target = training_text(item, tokenizer, prompt_format="continuation", chat_template=True)
    assert prompt.endswith("<|im_start|>assistant\n") and target == "Ice"
    # A text-target item (TruthfulQA) is trained on its gold option like any other in this format.
    assert training_text(TRUTHFUL, tokenizer, prompt_format="continuation", chat_template=False) == (
        "Question: Question: Can pigs fly?\nAnswer:",
        " No",
    )


def test_a_model_without_a_chat_template_says_how_to_fix_the_config(no_template):
    with pytest.raises(ChatTemplateError, match="no chat template.*train.chat_template and eval.chat_template to false"):
        render_prompt(ITEMS[0], no_template, chat_template=True, model_name="base-model")
    with pytest.raises(ChatTemplateError, match="'base-model'"):
        training_text(ITEMS[0], no_template, prompt_format="lettered", chat_template=True, model_name="base-model")
    with pytest.raises(ChatTemplateError):
        build_requests(ITEMS, no_template, chat_template=True)
    assert render_prompt(ITEMS[0], no_template, chat_template=False) == lettered_prompt(ITEMS[0])
