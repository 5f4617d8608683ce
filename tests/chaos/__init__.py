"""Chaos tests: the real client against a misbehaving FakeZapier (see harness.py)."""
