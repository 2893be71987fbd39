"""medpipe.data."""
