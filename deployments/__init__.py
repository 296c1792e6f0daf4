"""askshift.deployments: prefect.yaml and the cluster profiles, shipped as package data."""
