"""Tasks built from CLDR, the Unicode Common Locale Data Repository, as shipped in ``babel``.

CLDR is curated by the Unicode Consortium and translated by native speakers, so the facts
(which currency a territory uses, which languages are official where, which continent a time
zone's city is on) and their names in every grid language come from one reviewed source.
The facts are read from babel's own data files, never from today's date, so the items only
change when the pinned babel version does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache

import babel
from babel.core import get_global

from donors.tasks.embedded.base import Fact, FactTask, stable_order
from donors.tasks.registry import register_task

GROUPINGS = frozenset({"EU", "EZ", "QO", "UN", "XA", "XB", "ZZ"})
"""Two-letter CLDR region codes that are groupings or placeholders, not territories."""

OFFICIAL_STATUSES = frozenset({"official", "de_facto_official"})

CONTINENT_OF_TZ_AREA = {
    "Africa": "002",
    "America": "019",
    "Asia": "142",
    "Europe": "150",
    "Australia": "009",
    "Pacific": "009",
}
"""IANA time-zone areas that name a continent, mapped to CLDR's UN M.49 region codes.

Ocean areas (Atlantic, Indian) and the poles are left out: their islands belong to several
continents, and the zone id alone does not say which.
"""

CONTINENTAL_AREAS = ("Europe", "Asia", "Africa", "America", "Australia")
"""Tie-break order when a territory's zones lie in several continental areas (Spain: Europe, Africa)."""


@lru_cache(maxsize=None)
def locale(language: str) -> babel.Locale:
    return babel.Locale.parse(language)


def _proper(name: str | None, code: str) -> str | None:
    """A name, or None where CLDR has none (or only echoes the code back)."""
    return name if name and name != code else None


def territory_name(code: str, language: str) -> str | None:
    return _proper(locale(language).territories.get(code), code)


def currency_name(code: str, language: str) -> str | None:
    return _proper(locale(language).currencies.get(code), code)


def language_name(code: str, language: str) -> str | None:
    return _proper(locale(language).languages.get(code), code)


@lru_cache(maxsize=None)
def _writes_latin(language: str) -> bool:
    return get_global("likely_subtags")[language].split("_")[1] == "Latn"


def city_name(zone: str, language: str) -> str | None:
    """A time zone's exemplar city, as CLDR prescribes it.

    CLDR only lists a city where it differs from the zone id's last part; the spec's
    fallback (``America/Los_Angeles`` -> "Los Angeles") is used for languages written in
    Latin script, and nowhere else, since it would put Latin letters into Hindi or Chinese.
    """
    listed = locale(language).time_zones.get(zone, {}).get("city")
    if listed:
        return listed
    return zone.rsplit("/", 1)[-1].replace("_", " ") if _writes_latin(language) else None


@lru_cache(maxsize=None)
def territories() -> tuple[str, ...]:
    """ISO 3166 territories CLDR names in every language, sorted."""
    codes = (code for code in locale("en").territories if len(code) == 2 and code.isalpha())
    return tuple(sorted(code for code in codes if code not in GROUPINGS))


@lru_cache(maxsize=None)
def territory_area() -> dict[str, str]:
    """Each territory's tz area, the pack's notion of neighbourhood for plausible distractors.

    The continental area holding most of the territory's zones wins; a territory with zones
    only on ocean areas (Iceland: Atlantic) is grouped with the other islands of that ocean.
    """
    areas: dict[str, str] = {}
    for code, zones in get_global("territory_zones").items():
        counts = Counter(zone.split("/")[0] for zone in zones)
        continental = [area for area in CONTINENTAL_AREAS if counts[area]]
        if continental:
            areas[code] = max(continental, key=lambda area: (counts[area], -CONTINENTAL_AREAS.index(area)))
        elif counts:
            areas[code] = min(counts, key=lambda area: (-counts[area], area))
    return areas


def _ranked_distractors(key: str, near: set[str], everything: set[str], excluded: set[str]) -> tuple[str, ...]:
    """Wrong options for ``key``: the neighbours' first, then the rest, each in a stable shuffle."""
    first = stable_order(near - excluded, salt=key)
    rest = stable_order(everything - excluded - near, salt=key)
    return tuple(first + rest)


@lru_cache(maxsize=None)
def currency_facts() -> tuple[Fact, ...]:
    """Territory -> a currency that is legal tender there now (per CLDR's supplemental data).

    Every current tender of the territory is kept out of its distractors (Panama: balboa and
    US dollar), so exactly one option is right. Distractors come first from territories in
    the same area: a European territory gets European currencies.
    """
    tender_now: dict[str, list[str]] = {}
    for code in territories():
        history = get_global("territory_currencies").get(code, [])
        current = [currency for currency, _start, end, tender in history if end is None and tender]
        if current:
            tender_now[code] = current
    areas = territory_area()
    by_area: dict[str, set[str]] = defaultdict(set)
    for code, currencies in tender_now.items():
        by_area[areas.get(code, "")].update(currencies)
    everything = set().union(*tender_now.values())
    return tuple(
        Fact(code, currencies[0], _ranked_distractors(code, by_area[areas.get(code, "")], everything, set(currencies)))
        for code, currencies in tender_now.items()
    )


def _base_language(code: str) -> str:
    """``zh_Hant`` -> ``zh``: the question asks for a language, not a script variant."""
    return code.split("_")[0]


@lru_cache(maxsize=None)
def official_language_facts() -> tuple[Fact, ...]:
    """Territory -> its most widely spoken official (or de facto official) language.

    Any language CLDR lists as spoken in the territory, official or not, is kept out of the
    distractors (Canada: neither French nor Cree is offered as a wrong answer), so exactly
    one option is spoken there. Distractors come first from the area's official languages.
    """
    spoken = get_global("territory_languages")
    answers: dict[str, str] = {}
    for code in territories():
        official = [
            (info["population_percent"], language)
            for language, info in sorted(spoken.get(code, {}).items())
            if info["official_status"] in OFFICIAL_STATUSES
        ]
        if official:
            answers[code] = _base_language(max(official, key=lambda pair: pair[0])[1])
    areas = territory_area()
    by_area: dict[str, set[str]] = defaultdict(set)
    for code, language in answers.items():
        by_area[areas.get(code, "")].add(language)
    everything = set(answers.values())
    return tuple(
        Fact(
            code,
            language,
            _ranked_distractors(
                code, by_area[areas.get(code, "")], everything, {_base_language(spoken_code) for spoken_code in spoken[code]}
            ),
        )
        for code, language in answers.items()
    )


@lru_cache(maxsize=None)
def continent_facts() -> tuple[Fact, ...]:
    """Time zone city -> the continent its IANA zone id names (``Europe/Paris`` -> Europe).

    Three of the other four continents are the distractors, picked by a stable shuffle per city.
    """
    continents = set(CONTINENT_OF_TZ_AREA.values())
    facts = []
    for zone in sorted(get_global("zone_territories")):
        continent = CONTINENT_OF_TZ_AREA.get(zone.split("/")[0])
        if continent is not None:
            facts.append(Fact(zone, continent, tuple(stable_order(continents - {continent}, salt=zone))))
    return tuple(facts)


CURRENCY_QUESTIONS = {
    "ar": "{subject}: ما العملة المستخدمة هناك؟",
    "bn": "{subject}: সেখানে কোন মুদ্রা চলে?",
    "de": "{subject}: Welche Währung gilt dort?",
    "en": "{subject}: which currency is used there?",
    "es": "{subject}: ¿qué moneda se usa allí?",
    "fr": "{subject} : quelle monnaie y est utilisée ?",
    "hi": "{subject}: वहाँ कौन-सी मुद्रा चलती है?",
    "id": "{subject}: mata uang apa yang digunakan di sana?",
    "it": "{subject}: quale valuta si usa lì?",
    "pt": "{subject}: qual moeda é usada lá?",
    "zh": "{subject}：当地使用哪种货币？",
}
"""The territory leads, so no language needs an article or case ending fitted to its name."""

LANGUAGE_QUESTIONS = {
    "ar": "{subject}: ما اللغة الرسمية هناك؟",
    "bn": "{subject}: সেখানে কোন ভাষা সরকারি?",
    "de": "{subject}: Welche Sprache ist dort Amtssprache?",
    "en": "{subject}: which language is official there?",
    "es": "{subject}: ¿qué idioma es oficial allí?",
    "fr": "{subject} : quelle langue y est officielle ?",
    "hi": "{subject}: वहाँ कौन-सी भाषा आधिकारिक है?",
    "id": "{subject}: bahasa apa yang resmi di sana?",
    "it": "{subject}: quale lingua è ufficiale lì?",
    "pt": "{subject}: qual língua é oficial lá?",
    "zh": "{subject}：哪种语言是当地的官方语言？",
}

CONTINENT_QUESTIONS = {
    "ar": "في أي قارة تقع {subject}؟",
    "bn": "{subject} কোন মহাদেশে অবস্থিত?",
    "de": "Auf welchem Kontinent liegt {subject}?",
    "en": "On which continent is {subject}?",
    "es": "¿En qué continente está {subject}?",
    "fr": "Sur quel continent se trouve {subject} ?",
    "hi": "{subject} किस महाद्वीप में है?",
    "id": "Di benua manakah {subject}?",
    "it": "In quale continente si trova {subject}?",
    "pt": "Em que continente fica {subject}?",
    "zh": "{subject}位于哪个大洲？",
}


@register_task("cldr_currency")
def currency_task() -> FactTask:
    """Which currency is used in a territory; options are currencies."""
    return FactTask(
        name="cldr_currency",
        entity="territory",
        facts=currency_facts,
        subject_name=territory_name,
        option_name=currency_name,
        questions=CURRENCY_QUESTIONS,
    )


@register_task("cldr_language")
def official_language_task() -> FactTask:
    """Which language is official in a territory; options are languages."""
    return FactTask(
        name="cldr_language",
        entity="territory",
        facts=official_language_facts,
        subject_name=territory_name,
        option_name=language_name,
        questions=LANGUAGE_QUESTIONS,
    )


@register_task("cldr_continent")
def continent_task() -> FactTask:
    """Which continent a city is on; options are continents."""
    return FactTask(
        name="cldr_continent",
        entity="city",
        facts=continent_facts,
        subject_name=city_name,
        option_name=territory_name,
        questions=CONTINENT_QUESTIONS,
    )
