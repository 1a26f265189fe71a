"""Serving protocols the gateway speaks and the clients use (TF Serving's REST JSON)."""
