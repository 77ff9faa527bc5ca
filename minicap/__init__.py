"""minicap: image captioning with an end-to-end Transformer, the package behind the book.

Each module holds one concept and matches one chapter; import from the modules, e.g.
``from minicap.attention import MultiHeadAttention``.
"""
__version__ = "0.2.1"
