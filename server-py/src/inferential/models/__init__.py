"""Small real models shipped with the server, for the demo, tests and benchmarks."""
