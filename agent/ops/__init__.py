"""The service layer: the operations of agentd (:mod:`agent.ops.service`) and their typed records
(:mod:`agent.ops.records`). Front ends (the IPC method table, the HTTP doors) adapt to it."""
