"""The fund as a service: an HTTP API over the fund's directory and records.

- :mod:`~fhe_toolkit.service.wire`: what crosses the wire, shared with the participant's client
  (signed requests, the submission archive); imports no role
- :mod:`~fhe_toolkit.service.app`: the ASGI application (Starlette)
- :mod:`~fhe_toolkit.service.worker`: the decryption worker that empties the upload queue
- :mod:`~fhe_toolkit.service.server`: ``serve()``, the application on uvicorn

This package's ``__init__`` imports nothing, so that the participant's client can import
:mod:`~fhe_toolkit.service.wire` without the fund (the two roles never import each other).
"""
