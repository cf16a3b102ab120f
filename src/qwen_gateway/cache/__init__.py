"""The response cache: request keys, in-process and Redis stores, near-duplicate lookup."""
