"""Runtime overrides of real servers (drain, disable, enable, weight, clear), shared by the pair."""
