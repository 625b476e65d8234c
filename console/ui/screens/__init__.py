"""The console's screens: the live dashboard and the key help."""
