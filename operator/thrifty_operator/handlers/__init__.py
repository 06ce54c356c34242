"""kopf handlers, one module per kind; they parse, call pure builders, apply, report."""
