"""The domain's ground floor: run ids, files inside their root, scanning, the
manifest, selections, URL segments, ETags, CPUs and descriptors left. Plain
synchronous code: no aiohttp, nothing of aio/ or obs/ (pyproject.toml's
import-linter contracts)."""
