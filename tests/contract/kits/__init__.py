"""One module per backend kit; each is imported by ``kit.load_kits``."""
