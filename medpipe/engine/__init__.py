"""medpipe.engine."""
