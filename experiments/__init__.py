"""clipperlab experiments."""
