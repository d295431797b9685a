"""Loaded by the schemathesis run of test_fuzz.py (``SCHEMATHESIS_HOOKS``): chunk frames are
bytes, sent as they are generated (schemathesis knows no serializer for this media type)."""

import schemathesis

schemathesis.serializer.alias("application/x-cubby-chunks", "application/octet-stream")
