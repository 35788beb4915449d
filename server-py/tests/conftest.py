from __future__ import annotations

import os
import textwrap
from typing import Iterator

import pytest
from server_helpers import README_CUSTOM_SCHEDULER, running_server

from inferential.server import Server

# Servers started by these tests use the pure-Python transport unless the run asks for the
# native one (make test-py-native: INFERENTIAL_TRANSPORT=native); transport.native "auto"
# would otherwise pick whichever is built.
os.environ.setdefault("INFERENTIAL_TRANSPORT", "python")


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[Server, str]]:
    with running_server() as pair:
        yield pair


@pytest.fixture
def readme_custom_scheduler() -> type:
    """The README's ``MyScheduler``, registered as "my_scheduler": its snippet run
    up to the line that needs a server."""
    definition = README_CUSTOM_SCHEDULER.split("server.use_scheduler")[0]
    namespace: dict = {}
    exec(compile(textwrap.dedent(definition), "<README>", "exec"), namespace)
    return namespace["MyScheduler"]
