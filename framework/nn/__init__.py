"""conch.nn."""
