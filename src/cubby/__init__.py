"""cubby: self-hostable file storage and sync with content-defined deduplication."""

__version__ = "0.1.0"
