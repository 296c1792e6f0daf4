"""askshift.lib.models: model families, the training loop, fine-tuning strategies and DFR, pre-training, prediction."""
