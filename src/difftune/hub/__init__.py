"""Hub I/O: pipelines, checkpoints, model cards, export and push."""
