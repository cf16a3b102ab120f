"""OpenAI wire types: request models (pydantic) and response shapes (TypedDicts)."""
