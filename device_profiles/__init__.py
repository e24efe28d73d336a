"""Device profiles (data files)."""
