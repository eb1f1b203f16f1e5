"""Provider adapters: one sans-IO Api per provider wire format."""
