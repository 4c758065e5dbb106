"""Synthetic streams with known answers: scenes.py (colour/sound reactions), events.py (brief events,
delayed reactions, channels) and truth.py (their ground truth, read back as untrusted input)."""
