"""The run configurations (`--config=configs/NAME.py`); installed as `reid_jax.configs`."""
