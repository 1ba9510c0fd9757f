"""Test support: job types for tests, condition waits, worker processes."""
