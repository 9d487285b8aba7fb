"""HTTPS transport: the coordinator's FastAPI app, the participant's httpx client, messages."""
