"""Gateway services: upstream client, routing, auth, limits, ledger, pipeline stages."""
