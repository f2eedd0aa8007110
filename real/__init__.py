"""clipperlab real."""
