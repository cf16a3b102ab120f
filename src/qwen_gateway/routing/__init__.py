"""Which deployment answers a request: aliases, weighted A/B splits, intent routing (code /
math / general), replicas with load balancing and circuit breakers, fallbacks."""
