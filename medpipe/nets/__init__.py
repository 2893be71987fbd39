"""medpipe.nets."""
