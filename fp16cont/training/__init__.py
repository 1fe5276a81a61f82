"""Stage 3, training: the engine behind continue_training, its callbacks, guard, checkpoints and data checks."""
