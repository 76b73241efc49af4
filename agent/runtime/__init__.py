"""The runtime: variant worker processes, device placement and make-before-break hot swap."""
