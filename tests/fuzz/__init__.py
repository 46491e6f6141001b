"""Fuzz tests (hypothesis, >= 10,000 cases per target) of everything read from outside."""
