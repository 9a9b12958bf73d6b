"""Image and DICOM decoding with their limits, shared by the client and the server.

The one part of the client that the server imports, so both refuse the same inputs with the
same messages: ``decode`` (PNG, JPEG, the media type the bytes announce, ``DecodeLimits``) and
``dicom`` (which DICOM files are accepted and how their pixels are windowed). It imports
nothing of the rest of the client, only numpy, Pillow and, when a DICOM file arrives, pydicom;
the import contracts in pyproject.toml hold both directions.
"""
