"""The layer store: verified, safe, shared unpacking of OCI layers; images; containers."""
