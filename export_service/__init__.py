"""export-service: an AIR project's artifacts as a JSON manifest or one streamed ZIP."""

__version__ = "0.1.0"
