"""Formats: videos (decoding and the resize rule), the Zarr store, DAVIS masks, CSV and TAP-Vid tables, written videos, outputs written whole."""
