"""Client SDK for the maira-sae service (installs without torch)."""
