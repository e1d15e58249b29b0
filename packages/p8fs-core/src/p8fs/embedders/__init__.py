"""The built-in embedders: an OpenAI-compatible ``/v1/embeddings`` client and a local model folder.

Each lives in its own module so that registering it (``p8fs.builtin.embedders``) imports
neither httpx nor numpy nor tokenizers: those load on first use.
"""
