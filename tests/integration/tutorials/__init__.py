"""Each tutorial of the manual (``examples/tutorials/``) run as a real process."""
