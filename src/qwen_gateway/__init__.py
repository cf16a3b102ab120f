"""qwen-gateway: an OpenAI-compatible serving gateway for Qwen2.5 models."""

__version__ = "0.1.0"
