"""Data layer: reading rows, record kinds (a registry of schemas that carry metadata), encoding, collation."""
