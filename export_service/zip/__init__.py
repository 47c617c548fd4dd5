"""The ZIP: entry names (names), the plan (plan), zipstream-ng's records
(records), checked reads (checked_reads), CRC-32s and their cache (crcs), and
the bytes of one download (archive), each module over the ones after it.
Plain synchronous code, run off the event loop by its callers."""
