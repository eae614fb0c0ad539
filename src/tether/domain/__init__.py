"""Pure data and rules. Nothing in this package does I/O."""
