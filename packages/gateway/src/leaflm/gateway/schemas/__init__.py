"""Pydantic request and response bodies of the HTTP surfaces (OpenAI, TGI, ops)."""
