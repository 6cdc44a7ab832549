"""Ground truth: what was predicted, the labels that arrive later, and accuracy per version."""
