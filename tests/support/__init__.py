"""What the tests share: one builder of each kind (tiny configs and specs, trial rows, recorders) and paths."""
