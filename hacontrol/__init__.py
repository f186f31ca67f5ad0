"""hacontrol: a high-availability director controller for Linux Virtual Server."""

__version__ = "0.1.0"
