"""askshift.lib: the science (datasets, shifts, models, training, ER, splitting, storage, plots); no Prefect here."""
