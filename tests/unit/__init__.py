"""Unit tests: known answers and behaviour, one module per package area."""
