"""The bottom layer: the registry helper, progress output and typed batches shared by every layer above."""
