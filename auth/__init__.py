"""Tokens, passwords, users, companies and permissions."""
