"""Annoy indexes of patch embeddings: building, updating, validating and searching them."""
