"""Model families, configuration and checkpoint loading (HF directories and GGUF files)."""
