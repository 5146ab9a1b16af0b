"""One trial in plain PyTorch, no Ray: data, augmentation, backbones and their surgery, the feature cache and the
training loop. `study.trial.train.run_trial(config, data)` yields one report per epoch."""
