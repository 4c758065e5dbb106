"""Using a trained run: evaluation, sampling, generation for a VOD, replay pages, live mode."""
