"""ml_collections configs, one per control type, sharing `configs/base.py`."""
