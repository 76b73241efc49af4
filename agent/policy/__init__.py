"""The policy engine: policy files (TOML + CEL rules), a pure decide(), a stateful engine, a trace simulator.

Import from the submodules (``agent.policy.decide``, ``.engine``, ``.loader``, ``.simulate``, ``.table``);
nothing is imported here so that importing the package does no work.
"""
