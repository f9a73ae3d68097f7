"""drainer's test kit, shipped for your own tests."""
