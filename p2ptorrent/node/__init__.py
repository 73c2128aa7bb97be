"""A peer node: serving, downloading, the tracker client, control and the twistd service."""
