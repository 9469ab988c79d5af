"""Run a study's jobs: in this process (local.py) or on a Ray cluster (ray.py), one writer to the store."""
