"""Each stage's steps: small functions a notebook calls one per cell, and the
interactive form calls from its buttons. Facts and operations do the work;
a step records what later stages need in the run state and returns what the
notebook shows."""
