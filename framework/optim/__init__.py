"""conch.optim."""
