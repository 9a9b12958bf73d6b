"""A synthetic chest X-ray world with known concepts, and the demo model trained on it.

A miniature of the MAIRA-2 SAE study that runs on a laptop CPU. It is a toy: cartoon films
and a small report grammar, chosen so that every study's concepts (pacemaker, line_or_tube,
pleural_effusion, cardiomegaly) are known exactly. Nothing here says anything about radiology
or about the real MAIRA-2.

- ``studies``: ``generate_study`` / ``world_dataset``, deterministic from a seed; drawing is in
  ``radiographs``, the findings grammar and its inverse ``concepts_in_text`` in ``reports``.
- ``model_spec``: the small MAIRA-2 shape (real schema, 32 text layers, width 64, 8 x 8 patches).
- ``train_model``: teacher-forced training through the project's own model and processor.
- ``evaluation``: greedy reports and concept-level F1.
- ``build``: world -> model -> layer-15 activations -> SAE -> interpretations -> artifact.
- ``artifact``: the committed artifact and ``ensure_world_demo``, which materialises it.
- ``steering_eval``: steering curves; ``measure``: the shipped demo measured on held-out studies.
"""
