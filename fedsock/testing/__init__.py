"""Tools for testing fedsock deployments: a fault-injecting TCP proxy, a numpy worker."""
