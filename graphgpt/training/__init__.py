"""Training a character-level GPT with the compiled train step: corpus and batches, checkpoints, the training
loop, and sampling. The `graphgpt train` and `graphgpt generate` commands are built on these."""
