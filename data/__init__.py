"""Data: canonical schema, loaders for public formats, the synthetic shop, feature rules and `python -m data.prepare`."""
