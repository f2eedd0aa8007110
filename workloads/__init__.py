"""clipperlab workloads."""
