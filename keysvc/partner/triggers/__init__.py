"""Embedded triggers (Zapier's Trigger Inbox API): the pure pieces the partner package builds on.

    answers.py   Zapier's inbox, list, lease, ack/release, error and notification answers -> typed,
                 size-bounded values, or BadPartnerAnswer (502); never a KeyError or TypeError
    requests.py  the internal routes' inputs (trigger-inbox ensure, list, get, pause/resume, delete,
                 lease, ack, release) -> typed values, or InvalidRequest (400)
    json_bounds.py  the limits every JSON value crossing keysvc obeys (depth, size, I-JSON integers)
    signing.py   Standard Webhooks signatures for push delivery (`webhook-id`, `-timestamp`, `-signature`)
    delivery.py  the routes' answer members (inbox, lease) and one signed push delivery (body + headers)
    sealing.py   the sealed notification token: (inbox, user, tenant) <-> an opaque URL-safe AEAD token

Nothing here does I/O; the imports are keysvc.errors, keysvc.config's duration parser, the standard
library, cryptography and orjson.
"""
