"""The results store: SQLite, the only state the stages share."""

from donors.store.sqlite import STORE_NAME, ResultsStore, store_path

__all__ = ["STORE_NAME", "ResultsStore", "store_path"]
