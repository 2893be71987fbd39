"""medpipe.inference."""
