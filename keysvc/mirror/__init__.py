"""Optional S3 copy of each JWKS, so a CDN can serve it even when every replica is down (the `mirror`
section). Loads boto3: imported only when a mirror is configured.

s3.py     S3Mirror: writes one keyset's JWKS document to the bucket (blocking)
sync.py   MirrorSync: an observer of the keyring's events that writes each change, in order, off the loop
"""
