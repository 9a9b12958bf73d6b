"""maira-sae: MAIRA-2 with its sparse autoencoders, served over gRPC.

`maira_sae.sae` holds the SAE math and file formats, `maira_sae.server` the model runtime and
the service, `maira_sae.client` the SDK, and `maira_sae.v1` the generated protobuf contract.
"""

import importlib.metadata

__version__ = importlib.metadata.version("maira-sae")  # one version: pyproject's
