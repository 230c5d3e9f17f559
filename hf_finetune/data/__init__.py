"""Data: sources (folder, Hub dataset, hotdog download) -> labelled splits -> decoded cache -> loaders."""
