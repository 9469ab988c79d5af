"""donors: controlled transfer studies of parameter-efficient fine-tuning across tasks and languages.

The pipeline reads left to right, one folder per stage::

    tasks -> train -> evaluate -> store -> analysis -> report

and :mod:`donors.api` ties the stages into the few calls the CLI exposes.
"""

__version__ = "0.1.0"
