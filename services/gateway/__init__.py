"""The public Recommend API: validates, assigns the A/B variant and runs the stage chain."""
