"""Benchmarks of the maira-sae service: each module prints one JSON object; ``run_cpu`` runs
the CPU suite against the demo checkpoint, ``gpu_full_size`` the full-size model on a GPU."""
