"""Model families: checkpoint readers and the torch modules that run them."""
