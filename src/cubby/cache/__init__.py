"""The metadata cache: a Protocol with leases (`base`), in-process (`memory`), Redis
(`redis`) and memcached (`memcached`) implementations, and `CachedStore`, the metadata store
wrapped so that its hot reads go through a cache (`store`)."""
