import gc

from aiohttp.test_utils import TestServer

from export_service.access import runner_options
from export_service.app import GC_FULL_COLLECTION_EVERY, create_app
from tests.conftest import AirTree


async def test_full_collections_are_rarer_while_the_app_runs(tree: AirTree) -> None:
    """bench/huge_runs.py: at Python's default, full collections over the
    planned entries of big ZIPs held /healthz for 300-500 ms."""
    before = gc.get_threshold()
    assert before[2] < GC_FULL_COLLECTION_EVERY
    server = TestServer(create_app(tree.settings()))
    await server.start_server(**runner_options(server.app))
    try:
        assert gc.get_threshold() == (*before[:2], GC_FULL_COLLECTION_EVERY)
    finally:
        await server.close()
    assert gc.get_threshold() == before
