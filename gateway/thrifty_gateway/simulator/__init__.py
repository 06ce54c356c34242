"""A separate OpenAI-compatible provider process for development, tests and the demo."""
