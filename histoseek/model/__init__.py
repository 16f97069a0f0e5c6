"""Backbones, global descriptors and the CGD embedding model."""
