"""Test helpers, public: a manual clock and an emulator of Zapier's run APIs.

`FakeZapier` is an aiohttp.web server on 127.0.0.1 that speaks the same HTTP contract as
Zapier; point a real `ZapierClient` at `fake.url`. The `fake_zapier` pytest fixture (installed
with this package) yields a started one.
"""

from ._clock import FakeClock
from ._fake import FakeStats, FakeZapier, RecordedRequest, RunRecord
from ._fake_auth import FAKE_APP_ID, FakeAction, FakeAuthServer, FakeCatalog, FakeConnection

__all__ = [
    "FAKE_APP_ID",
    "FakeAction",
    "FakeAuthServer",
    "FakeCatalog",
    "FakeClock",
    "FakeConnection",
    "FakeStats",
    "FakeZapier",
    "RecordedRequest",
    "RunRecord",
]
