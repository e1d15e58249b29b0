"""p8fs-node: content providers for p8fs (PDF, office, HTML, Markdown, EPUB, audio, video)."""

__version__ = "0.1.0"
