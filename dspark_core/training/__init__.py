"""Draft-module training: anchor sampling, the DSpark/DFlash objective, the resumable trainer loop."""
