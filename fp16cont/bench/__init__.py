"""Reference models, datasets and the demo used by the command line and the benchmarks."""
