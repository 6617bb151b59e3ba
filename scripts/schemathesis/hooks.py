"""schemathesis hooks for the Sentinel control plane.

Apply (`POST /v1/configs`) takes raw KDL as `text/plain` or
`application/kdl`. schemathesis knows how to send `text/plain` but not
`application/kdl`; this serializer sends a generated string as UTF-8 text,
the same as `text/plain`.
"""

import schemathesis


@schemathesis.serializer("application/kdl")
def kdl(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
