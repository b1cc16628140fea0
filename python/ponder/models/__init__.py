"""Model families, configuration and checkpoint loading."""
