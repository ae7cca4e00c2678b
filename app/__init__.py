"""The FastAPI layer: app factory, routes, dependencies, error handlers, CLI."""
