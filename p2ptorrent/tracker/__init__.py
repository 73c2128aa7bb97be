"""The tracker: swarm state, its JSON database, the Klein routes and the twistd service."""
