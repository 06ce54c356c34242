"""Output and prompt hygiene per route: default stop sequences and the repeated long prefix
metric (the max_tokens ceiling is applied by the proxy from route.maxTokensCeiling; providers'
cached input tokens are priced at the cached-input price by the price catalog)."""
