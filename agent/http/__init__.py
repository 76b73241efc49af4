"""agentd's HTTP listener (`agentd --http 127.0.0.1:8077`): OpenAI, KServe v2, Ollama and Prometheus doors;
see docs/SERVING.md."""
