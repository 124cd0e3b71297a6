"""Everything that produces readings: simulator, CSV replay, serial bridge."""
