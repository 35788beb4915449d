from __future__ import annotations

import pytest

from client_peer import RouterPeer


@pytest.fixture
def peer():
    p = RouterPeer()
    yield p
    p.close()
