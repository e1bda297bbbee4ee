"""Data: synthetic scenes, caption-file readers, vocabulary, image reading and batching."""
