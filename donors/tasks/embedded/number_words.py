"""Number words: which numeral is a spelled-out number?

The pack's easy task. Every digit of the answer is spelled by a word of the question, and the
distractors differ from it in one digit or by a digit swap, so a model that learns to read
number words gets it right; the options are the same numerals in every language.

Spellings come from CLDR's rule-based number formats through ``unicode-rbnf``, like the rest
of the pack's data, except in two languages where ``num2words`` does better: Bengali, which
unicode-rbnf lacks, and Arabic, where CLDR's rules spell 300 as "ثلاثة مائة" for "ثلاثمائة".
(num2words would cover the others too, but misspells Italian, "centodicotto" for 118.)
"""

from __future__ import annotations

from functools import lru_cache

from num2words import num2words
from unicode_rbnf import FormatPurpose, RbnfEngine

from donors.tasks.embedded.base import Fact, FactTask, stable_order
from donors.tasks.registry import register_task

LARGEST = 999
NUM2WORDS_LANGUAGES = frozenset({"ar", "bn"})
RBNF_RULESETS = {"zh": "spellout-cardinal"}
"""CLDR ruleset per language where the standalone ``spellout-numbering`` is not the plain
cardinal (Chinese numbering writes 805 as 八百〇五, the cardinal as 八百零五)."""


@lru_cache(maxsize=None)
def _rbnf_engine(language: str) -> RbnfEngine:
    return RbnfEngine.for_language(language)


def _tidy_arabic(words: str) -> str:
    """Fix two num2words slips: a detached "and" (``و سبعة``) and the construct form of 200."""
    words = words.replace(" و ", " و")
    return "مئتان" if words == "مئتا" else words


@lru_cache(maxsize=None)
def spelled(number: int, language: str) -> str:
    """``number`` in words, as a cardinal."""
    if language in NUM2WORDS_LANGUAGES:
        words = num2words(number, lang=language)
        return _tidy_arabic(words) if language == "ar" else words
    ruleset = RBNF_RULESETS.get(language, "spellout-numbering")
    return _rbnf_engine(language).format_number(number, FormatPurpose.CARDINAL, ruleset_names=[ruleset]).text


def number_name(code: str, language: str) -> str:
    return spelled(int(code), language)


def numeral(code: str, language: str) -> str:
    """Options are written in ASCII digits in every language, so they are identical everywhere."""
    return code


def near_misses(number: int) -> list[int]:
    """Numbers one digit away (±1, ±10, ±100) or with two digits swapped, within 1..LARGEST."""
    digits = str(number)
    misses = {number + step for step in (-100, -10, -2, -1, 1, 2, 10, 100)}
    for i in range(len(digits)):
        for j in range(i + 1, len(digits)):
            swapped = list(digits)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            misses.add(int("".join(swapped)))
    return sorted(miss for miss in misses if 1 <= miss <= LARGEST and miss != number)


@lru_cache(maxsize=None)
def number_facts() -> tuple[Fact, ...]:
    return tuple(
        Fact(str(number), str(number), tuple(stable_order(map(str, near_misses(number)), salt=str(number))))
        for number in range(1, LARGEST + 1)
    )


NUMBER_QUESTIONS = {
    "ar": "ما العدد «{subject}»؟",
    "bn": "“{subject}” কোন সংখ্যা?",
    "de": "Welche Zahl ist „{subject}“?",
    "en": 'Which number is "{subject}"?',
    "es": "¿Qué número es «{subject}»?",
    "fr": "Quel nombre s'écrit « {subject} » ?",
    "hi": "“{subject}” कौन-सी संख्या है?",
    "id": "Angka berapakah “{subject}”?",
    "it": "Quale numero è «{subject}»?",
    "pt": "Que número é “{subject}”?",
    "zh": "“{subject}”是哪个数字？",
}


@register_task("number_words")
def number_words_task() -> FactTask:
    """Which numeral a spelled-out number from 1 to 999 is; options are nearby numerals."""
    return FactTask(
        name="number_words",
        entity="number",
        facts=number_facts,
        subject_name=number_name,
        option_name=numeral,
        questions=NUMBER_QUESTIONS,
    )
