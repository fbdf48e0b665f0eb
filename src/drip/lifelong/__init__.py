"""drip over a device's life."""
