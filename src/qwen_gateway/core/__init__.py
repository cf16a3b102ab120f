"""Internal types the engines speak, independent of the wire format."""
