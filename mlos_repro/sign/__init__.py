"""Signing, always outside the sandbox, on outputs the store already holds."""
