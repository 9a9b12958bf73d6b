"""The engine: one thread that owns the model, with hooks, encode and the decode loop."""
