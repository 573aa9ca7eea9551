"""Training: datasets, reference models, the finetuning loop (tridim's own or the user's),
devices and torchrun ranks."""
