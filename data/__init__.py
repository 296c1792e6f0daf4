"""askshift.data: published results shipped with the package (timm-results/), read with importlib.resources."""
