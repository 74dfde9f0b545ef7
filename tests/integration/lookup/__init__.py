"""Integration tests of slimta.lookup against real backends."""
