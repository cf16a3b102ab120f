"""Qwen2.5 specifics: chat template, tokenizer and tool-call format."""
