"""`async with x:` for objects closed with `await x.aclose()`: the protocol, written once."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["AsyncCloseable"]

_T = TypeVar("_T", bound="AsyncCloseable")


class AsyncCloseable:
    """Mixin: entering returns the object, leaving awaits its `aclose()`.

    Subclasses define `aclose()`, and override `__aenter__` when entering must do something
    (open a connection, start a server) before returning ``self``.
    """

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
