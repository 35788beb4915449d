from __future__ import annotations

from typing import Iterator

import pytest

from inferential.server import Server
from server_helpers import running_server


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[Server, str]]:
    with running_server() as pair:
        yield pair
