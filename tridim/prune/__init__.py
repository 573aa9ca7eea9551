"""The three dimensions of compression: depth, width and input resolution."""
