"""conch.amp."""
