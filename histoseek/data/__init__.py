"""Folder walking, image loading, transforms, sampling and dataset preparation."""
