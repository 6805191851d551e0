"""The audit trail: a hash chain over the log, signed checkpoints, receipts, replay."""
