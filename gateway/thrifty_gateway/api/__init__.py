"""HTTP routers of the gateway and their dependencies."""
