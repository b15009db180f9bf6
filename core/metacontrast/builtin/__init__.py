"""Built-in components, registered through the same path as external plugins."""
