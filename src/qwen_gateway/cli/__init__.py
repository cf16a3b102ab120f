"""The ``qwen-gateway`` command."""
