"""conch.data."""
