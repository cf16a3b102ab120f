"""The HTTP layer: thin routes over the service, the SSE encoder and the error mapping."""
