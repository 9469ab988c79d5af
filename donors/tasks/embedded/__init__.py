"""The embedded task pack: multiple-choice tasks built offline from curated data in installed packages.

Nothing is downloaded: the facts and their names in all eleven grid languages come from CLDR
(through ``babel``) and from number-spelling libraries, so the pack builds the same items on
any machine with the pinned package versions. The tasks differ in kind:

* ``number_words`` -- which numeral a spelled-out number is (easy: readable from the words);
* ``cldr_currency`` -- which currency a territory uses;
* ``cldr_language`` -- which language is official in a territory;
* ``cldr_continent`` -- which continent a city is on.

:mod:`donors.tasks.embedded.base` holds what they share: splitting, choice picking, balancing.
"""

from donors.tasks.embedded import cldr, number_words
from donors.tasks.embedded.base import FactTask

TASK_NAMES = ("number_words", "cldr_currency", "cldr_language", "cldr_continent")

__all__ = ["TASK_NAMES", "FactTask", "cldr", "number_words"]
