"""Built-in chunkers plugin (filled by the chunking work)."""
