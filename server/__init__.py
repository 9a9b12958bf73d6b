"""The MAIRA-2 runtime and the gRPC service that serves it."""
