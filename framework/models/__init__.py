"""conch.models."""
