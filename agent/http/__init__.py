"""OpenAI-compatible HTTP endpoint of agentd (``agentd --http 127.0.0.1:8077``); see docs/SERVING.md."""
