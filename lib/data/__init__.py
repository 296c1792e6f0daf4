"""askshift.lib.data: datasets, shifts, experiment specs, .beton storage, FFCV loaders and what a model sees."""
