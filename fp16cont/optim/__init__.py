"""Stage 2, optimizer: compensated 16-bit updates, loss scaling, and carrying optimizer state over."""
