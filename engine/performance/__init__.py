"""Live model performance: labels sent back, joined with the scored rows, metrics per version."""
