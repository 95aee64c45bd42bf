"""fhe_toolkit: Numerai-style tournaments on data encrypted with fully homomorphic encryption."""

__version__ = "0.1.0"
