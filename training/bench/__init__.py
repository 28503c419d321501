"""Benchmark peers that need torch (kept out of the torch-free `service/` package)."""
