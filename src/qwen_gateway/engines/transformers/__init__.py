"""The in-process engine: PyTorch + transformers, continuous batching, CPU or GPU."""
