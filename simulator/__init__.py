"""clipperlab simulator."""
