"""Serving a run over HTTP (`gptkit serve`): an OpenAI-compatible completions API with
streaming and request batching, classification, and a playground page.

Needs the `serve` extra (FastAPI and uvicorn). `create_app(run, settings)` builds the app for
a loaded run; `serve` runs it under uvicorn; `background` runs it in a thread.
"""

from gptkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "background", "create_app", "serve"]


def __getattr__(name: str) -> object:
    """FastAPI is imported only when the app is needed (the settings need no extra)."""
    if name == "create_app":
        from gptkit.serve.app import create_app

        return create_app
    if name in ("serve", "background"):
        from gptkit.serve import server

        return getattr(server, name)
    raise AttributeError(name)
