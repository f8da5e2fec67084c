"""Benchmark scripts (run by hand, never collected by pytest: testpaths = ["tests"])."""
