"""The OCI image model: digests, descriptors, index/manifest/config, media types, sources."""
