"""Local IPC: length-prefixed frames with a JSON-RPC 2.0 header and raw tensor buffers."""
