"""Turning whole histology images (BACH, BRACS, extended CRC, any folder) into labelled patches."""
