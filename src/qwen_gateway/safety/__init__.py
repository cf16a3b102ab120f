"""Content safety: text normalisation, the multi-pattern matcher, the streaming output filter, the high-risk classifier."""
