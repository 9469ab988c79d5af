"""Every text a model reads, and every answer it is trained or scored on, in one place.

Two formats, the same for training and evaluation:

* ``lettered``: the question, the options as ``A) ...``, then ``Answer:``; the answer is
  the option's letter (one token). This is the published study's training format, and how
  lm-eval scores Global-MMLU.
* ``continuation``: ``Question: ...\\nAnswer:``; the answer is the option's own text, so
  a model is scored on, and trained to produce, what an option says rather than its
  position. This is how lm-eval scores ARC, HellaSwag and TruthfulQA, and how the
  published study trained TruthfulQA. No option order is shown, so no letter can be preferred.

After a chat template the answer follows the assistant header with no space; after a bare
``Answer:`` it follows a space (lm-eval's ``target_delimiter``, see :func:`render_prompt`).
Scorers and the trainer only tokenise what this module renders; none builds text of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from donors.errors import DonorsError
from donors.tasks.item import LETTERS, Item

PromptFormat = Literal["lettered", "continuation"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("lettered", "continuation")


class ChatTemplateError(DonorsError):
    """A chat template was asked for and the model has none."""


def lettered_prompt(item: Item) -> str:
    """Question, lettered options ``A) ...``, then ``Answer:``."""
    options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(item.choices))
    return f"{item.question}\n{options}\nAnswer:"


def continuation_prompt(item: Item) -> str:
    """The question alone, as the published ARC task words it; the option texts follow as answers."""
    return f"Question: {item.question}\nAnswer:"


def prompt_text(item: Item, prompt_format: PromptFormat) -> str:
    """What the model reads before its answer, before any chat template."""
    if prompt_format == "lettered":
        return lettered_prompt(item)
    if prompt_format == "continuation":
        return continuation_prompt(item)
    raise ValueError(f"unknown prompt format {prompt_format!r}; use one of {', '.join(PROMPT_FORMATS)}")


def choice_strings(item: Item, prompt_format: PromptFormat) -> tuple[str, ...]:
    """The strings scored as answers (lm-eval's ``doc_to_choice``): letters, or the option texts."""
    return tuple(LETTERS[: len(item.choices)]) if prompt_format == "lettered" else item.choices


def target_delimiter(chat_template: bool) -> str:
    """`` `` before each answer; none after a chat template's assistant header, as lm-eval does (PR #2475)."""
    return "" if chat_template else " "


def wrap_in_chat(prompt: str, tokenizer, *, model_name: str = "") -> str:
    """The prompt as the user's turn of the model's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"model {model_name or tokenizer.name_or_path!r} has no chat template; "
            "set train.chat_template and eval.chat_template to false in the study config"
        )
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def render_prompt(item: Item, tokenizer, *, chat_template: bool, prompt_format: PromptFormat = "lettered", model_name: str = "") -> str:
    """The exact text a model sees before its answer.

    With ``chat_template`` the prompt, ``Answer:`` included, is the single user turn and the
    text ends with the assistant header (``add_generation_prompt=True``), as
    lm-evaluation-harness 0.4.9.2 renders a 0-shot task under ``--apply_chat_template`` (no
    system turn of its own; the template's default one, if any, stays). The answer follows
    that header directly: for ``multiple_choice`` tasks the harness sets ``target_delimiter``
    to ``""`` when a chat template is applied (EleutherAI/lm-evaluation-harness PR #2475,
    November 2024), so the continuation is ``A``, not the `` A`` it scores after a bare
    ``Answer:``. The harness's ``_encode_pair`` also moves the header's trailing newline into
    the continuation, which adds the same log-probability to every choice and so changes no
    prediction; scoring after the full header, as here, predicts the same answer.
    """
    prompt = prompt_text(item, prompt_format)
    return wrap_in_chat(prompt, tokenizer, model_name=model_name) if chat_template else prompt


def training_text(item: Item, tokenizer, *, prompt_format: PromptFormat, chat_template: bool, model_name: str = "") -> tuple[str, str]:
    """(prompt, target) of one training example; the loss falls on the target's tokens only.

    ``lettered``: the answer letter; an item with a ``target_text`` (TruthfulQA in the
    published recipe) is trained as that text alone, loss on all of it, as published.
    ``continuation``: the gold option's text after the same prompt it is scored after.
    """
    if prompt_format == "lettered" and item.target_text is not None:
        return "", item.target_text
    prompt = render_prompt(item, tokenizer, chat_template=chat_template, prompt_format=prompt_format, model_name=model_name)
    return prompt, target_delimiter(chat_template) + choice_strings(item, prompt_format)[item.answer_index]


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + target; tokens from ``loss_start`` on are the target."""

    input_ids: tuple[int, ...]
    loss_start: int


def encode_example(prompt: str, target: str, tokenizer, max_length: int) -> EncodedExample:
    """Tokenize prompt and target together and left-truncate, as the study's training did.

    Tokenizing the joined text (not the parts) gives the tokens a model actually sees; the
    target starts where the prompt's own tokens end. A prompt that a chat template already
    began with the start token gets no second one.
    """
    bos = tokenizer.bos_token
    special = not (bos and prompt.startswith(bos))
    prompt_ids = tokenizer(prompt, add_special_tokens=special).input_ids if prompt else []
    full_ids = tokenizer(prompt + target, add_special_tokens=special).input_ids
    start = len(prompt_ids)
    if full_ids[:start] != prompt_ids:
        # A merge across the boundary: fall back to concatenating the separately encoded parts.
        full_ids = prompt_ids + tokenizer(target, add_special_tokens=False).input_ids
    if not prompt:
        start = 1 if full_ids and full_ids[0] == tokenizer.bos_token_id else 0
    if len(full_ids) > max_length:
        cut = len(full_ids) - max_length
        full_ids, start = full_ids[cut:], max(start - cut, 1)
    return EncodedExample(tuple(full_ids), start)


@dataclass(frozen=True)
class ScoringRequest:
    """One item as token ids: the shared context and each choice's continuation."""

    item: Item
    context_ids: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    continuation_texts: tuple[str, ...]


def build_requests(
    items: Sequence[Item],
    tokenizer,
    *,
    chat_template: bool,
    prompt_format: PromptFormat = "lettered",
    model_name: str = "",
    max_length: int = 4096,
) -> list[ScoringRequest]:
    """Every item's context and answers as token ids, rendered exactly as training renders them."""
    requests = []
    for item in items:
        context = render_prompt(item, tokenizer, chat_template=chat_template, prompt_format=prompt_format, model_name=model_name)
        texts = tuple(target_delimiter(chat_template) + choice for choice in choice_strings(item, prompt_format))
        encoded = [encode_example(context, text, tokenizer, max_length) for text in texts]
        context_ids = encoded[0].input_ids[: encoded[0].loss_start]
        continuations = []
        for e in encoded:
            if e.input_ids[: e.loss_start] != context_ids:
                raise ValueError(f"item {item.id}: choices tokenize the shared context differently")
            continuations.append(e.input_ids[e.loss_start :])
        requests.append(ScoringRequest(item, context_ids, tuple(continuations), texts))
    return requests
