"""The model zoo: manifests (reading, validating, importing) and the variant builders."""
