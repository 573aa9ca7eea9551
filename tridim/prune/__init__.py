"""The three dimensions of compression: channel groups and criteria, width, depth (blocks
and their gains), input resolution, and realising a triple as a model and its plan."""
