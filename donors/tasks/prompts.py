"""The study's prompt formats, and chat-template wrapping."""

from __future__ import annotations

from dataclasses import dataclass

from donors.tasks.item import LETTERS, Item


def lettered_prompt(item: Item) -> str:
    """Question, lettered options ``A) ...``, then ``Answer:``; see :func:`answer_continuation` for the answer."""
    options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(item.choices))
    return f"{item.question}\n{options}\nAnswer:"


def answer_continuation(letter: str, *, chat_template: bool = False) -> str:
    """The one trained and scored token: `` X`` after ``Answer:``, bare ``X`` after a chat template's assistant header.

    lm-evaluation-harness drops its target delimiter (the space) under ``--apply_chat_template``;
    see :func:`render_prompt`.
    """
    return letter if chat_template else f" {letter}"


class ChatTemplateError(ValueError):
    pass


def wrap_in_chat(prompt: str, tokenizer, *, model_name: str = "") -> str:
    """The prompt as the user's turn of the model's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"model {model_name or tokenizer.name_or_path!r} has no chat template; "
            "set train.chat_template and eval.chat_template to false in the study config"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def render_prompt(item: Item, tokenizer, *, chat_template: bool, model_name: str = "") -> str:
    """The exact text a model sees before its answer, in the study's lettered format.

    With ``chat_template`` the lettered prompt, ``Answer:`` included, is the single user turn
    and the text ends with the assistant header (``add_generation_prompt=True``), as
    lm-evaluation-harness 0.4.9.2 renders a 0-shot task under ``--apply_chat_template``
    (no system turn of its own; the template's default one, if any, stays). The answer follows
    that header directly: for ``multiple_choice`` tasks the harness sets ``target_delimiter``
    to ``""`` when a chat template is applied (EleutherAI/lm-evaluation-harness PR #2475,
    November 2024), so the continuation is ``A``, not the `` A`` it scores after a bare
    ``Answer:``. :func:`answer_continuation` does the same. The harness's ``_encode_pair``
    also moves the header's trailing newline into the continuation, which adds the same
    log-probability to every choice and so changes no prediction; scoring the letter after the
    full header, as here, predicts the same answer.
    """
    prompt = lettered_prompt(item)
    return wrap_in_chat(prompt, tokenizer, model_name=model_name) if chat_template else prompt


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
