"""Corpus preparation: ingestion, tokenizer training, indexed datasets, entropy scoring, position selection."""
