"""Draft modules (DSpark, DFlash, Eagle3), their runtime drafters, checkpoints and the drafter registry."""
