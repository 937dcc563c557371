"""Tools for testing fedsock deployments: a fault-injecting TCP proxy, shaped links in network
namespaces, a numpy worker, and chaos runs that combine them with kills and stops."""
