"""The results store: SQLite, the only state the stages share."""

from donors.store.sqlite import ResultsStore, StoreError

__all__ = ["ResultsStore", "StoreError"]
