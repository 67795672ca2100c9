"""Data: sources (one module per kind, one registry), dataset spec, tables, splits, image decoding, data checks."""
