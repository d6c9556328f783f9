"""The ground every layer stands on: the project's errors, structured logging, the lazy backend loader and small
shared helpers. It imports no app of the project (tests/test_layers.py keeps it so)."""
