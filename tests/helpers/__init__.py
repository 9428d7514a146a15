"""Plain helpers the test modules share (fixtures live in conftest.py; no test module imports another)."""
