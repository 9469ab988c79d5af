"""Capped splits are balanced over gold positions, with the same ids in every language."""

from __future__ import annotations

from collections import Counter

from donors.config import config_from_dict
from donors.tasks.data import balanced_ids, load_study_data
from donors.tasks.item import Item


def items(golds: list[int], language: str = "en") -> list[Item]:
    return [Item(f"i{k:03d}", "t", language, f"q{k}", ("a", "b", "c", "d"), gold) for k, gold in enumerate(golds)]


def gold_counts(chosen: list[str], pool: list[Item]) -> Counter:
    by_id = {item.id: item.answer_index for item in pool}
    return Counter(by_id[i] for i in chosen)


def test_each_position_is_within_one_of_equal_when_the_split_allows():
    pool = items([0] * 50 + [1] * 30 + [2] * 20 + [3] * 10)  # lopsided, like a first-N cut of a real split
    for limit in (4, 7, 13, 40):
        counts = gold_counts(balanced_ids(pool, limit), pool)
        assert sum(counts.values()) == limit and max(counts.values()) - min(counts.values()) <= 1
    # A position that runs out leaves the rest to the others, still as even as they allow.
    counts = gold_counts(balanced_ids(pool, 60), pool)
    assert counts[3] == 10 and sorted(counts.values()) == [10, 16, 17, 17]


def test_items_of_each_option_count_keep_their_share_and_are_balanced_on_their_own():
    """ARC mixes 3 to 5 options: position E exists only on 5-option items, so balancing across all would favour them."""
    pool = [
        Item(f"i{k:04d}", "t", "en", f"q{k}", tuple("abcdefg"[:width]), (k * 7) % width)
        for k, width in enumerate([2] * 300 + [4] * 600 + [5] * 100)
    ]
    by_id = {item.id: item for item in pool}
    chosen = [by_id[i] for i in balanced_ids(pool, 101)]
    widths = Counter(len(item.choices) for item in chosen)
    assert len(chosen) == 101 and widths == {2: 30, 4: 61, 5: 10}  # 30.3 / 60.6 / 10.1: largest remainders
    for width in widths:
        counts = Counter(item.answer_index for item in chosen if len(item.choices) == width)
        assert set(counts) == set(range(width)) and max(counts.values()) - min(counts.values()) <= 1
    # So answering the first option, or the last, scores chance: the mean of 1/k.
    chance = sum(1 / len(item.choices) for item in chosen) / len(chosen)
    for answer in (lambda item: 0, lambda item: len(item.choices) - 1):
        assert abs(sum(item.answer_index == answer(item) for item in chosen) / len(chosen) - chance) < 0.02


def test_the_choice_is_reproducible_and_does_not_depend_on_input_order():
    pool = items([k % 4 for k in range(100)])
    assert balanced_ids(pool, 20) == balanced_ids(list(reversed(pool)), 20)


def test_a_study_cut_keeps_the_same_balanced_ids_in_every_language():
    config = config_from_dict(
        {
            "models": ["smollm2-135m"],
            "tasks": ["number_words", "cldr_continent"],
            "languages": ["en", "de", "zh"],
            "train": {"max_items": 10},
            "eval": {"max_items": 12},
        }
    )
    data = load_study_data(config)
    for task in ("number_words", "cldr_continent"):
        test_ids = {lang: [i.id for i in data.test[cell]] for cell in data.test if cell.task == task for lang in [cell.language]}
        assert len({tuple(sorted(ids)) for ids in test_ids.values()}) == 1
        for cell, cut in data.test.items():
            if cell.task == task:
                assert sorted(Counter(i.answer_index for i in cut).values()) == [3, 3, 3, 3]
        for cell, cut in data.train.items():
            if cell.task == task:
                counts = Counter(i.answer_index for i in cut).values()
                assert len(cut) == 10 and max(counts) - min(counts) <= 1
