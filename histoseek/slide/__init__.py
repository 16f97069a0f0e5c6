"""Whole-slide images (and plain images) behind one reader, cut into tissue tiles at a given mpp."""
