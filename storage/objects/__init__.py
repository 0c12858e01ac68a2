"""Object storage: the `ObjectStore` protocol, its key layout, and the two backends.

Owns the contract and `make_object_store(settings)` (`base`), the local-directory store with HMAC-signed links
(`local`, the embedded default) and the S3 store for any S3-compatible endpoint (`s3`). Keys are validated the
same way by both. It knows nothing of jobs beyond their key layout.
"""
