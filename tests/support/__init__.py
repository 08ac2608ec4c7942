"""Test helpers: real services started for the test session."""
