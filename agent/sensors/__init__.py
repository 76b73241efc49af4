"""Device sensors: one reader per source, each taking a root path, combined into a frozen Snapshot."""
