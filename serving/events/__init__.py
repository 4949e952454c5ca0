"""The personalization platform's event side: collector API, stores, identity, profiles, exports.

- `schema`: event and identify payloads, validated with a reason per rejected field.
- `store`: `EventStore` with SQLite (embedded, WAL) and Redis (production) implementations.
- `profile`: a shopper's profile across devices, computed from the store.
- `app`: the FastAPI collector; `python -m serving.events serve ...`.
- `export`: events -> canonical Parquet for `data.prepare`; `pos`: point-of-sale files -> events.
"""
