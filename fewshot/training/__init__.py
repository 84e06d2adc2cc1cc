"""Meta-training: the episodic loop, augmentation, checkpoints."""
