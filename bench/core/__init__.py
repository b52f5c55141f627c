"""The ground floor of the harness: what the pre-training and transfer stages share.

Nothing here imports the rest of `bench`, nor `pretrain` or `transfer` (tests/test_imports.py).
Import the modules themselves (`from bench.core.checkpoint import load_checkpoint`); this file
deliberately imports nothing.
"""
