"""medkd3d.engines."""
