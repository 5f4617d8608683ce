"""Scenario 5: with callbacks on: polls per run and detection lag (a placeholder for now).

When the library can receive Zapier's callbacks (``callback_url`` on create, a receiver that
verifies ``Zapier-Callback-Signature`` and resolves the handle), this scenario will run the
workload of scenario 2 (`detection`) with callbacks on: polls per run should fall to ~0 (a
poll only as a safety net when a callback is late) and the detection lag to the callback's
delivery time. Until then `measure` reports it as not available; the harness prints that
and carries on.

Run: ``python -m benchmarks.callbacks``
"""

from __future__ import annotations

import asyncio

from ._common import Report

TITLE = "With callbacks on: polls per run and detection lag"


def unavailable_reason() -> str | None:
    """Why the scenario cannot run, or None once it can.

    The library's callback receiver (`zapier_async.callbacks`) is being built under another
    issue; this scenario's measurement is written once it lands (see the module docstring).
    """
    return "callbacks not implemented"


async def measure() -> Report:
    return Report(number=5, title=TITLE, unavailable=unavailable_reason())


def main() -> None:
    print(asyncio.run(measure()).text())


if __name__ == "__main__":
    main()
