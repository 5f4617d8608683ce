"""The scenario table against the pure budget machine and the in-memory `Limiter`."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from limiter_scenarios import (
    SCENARIOS,
    SPEND_SCENARIOS,
    LimiterUnderTest,
    Scenario,
    run_async,
    simulate,
)

from zapier_async._budget import BudgetConfig
from zapier_async._limiter import Limiter

ASYNC = {"2s-first-ceil", "2s-aligned-epoch", "2s-first-forgotten", "60s-first-iso"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_budget_machine_keeps_every_scenario(scenario: Scenario) -> None:
    simulate(scenario).check(scenario)


@pytest.mark.parametrize("scenario", SPEND_SCENARIOS, ids=lambda s: s.name)
def test_spending_the_window_keeps_every_scenario(scenario: Scenario) -> None:
    simulate(scenario, BudgetConfig(spend_window=True)).check(scenario)


@pytest.mark.parametrize("scenario", SPEND_SCENARIOS[1:4], ids=lambda s: s.name)
def test_spending_the_window_beats_pacing_on_zapiers_windows(scenario: Scenario) -> None:
    spend = simulate(scenario, BudgetConfig(spend_window=True))
    paced = simulate(scenario, BudgetConfig())
    assert spend.ratio < paced.ratio - 0.03


class _Keyed:
    """An adapter: one `Limiter` seen through one of its keys (other keys stay idle)."""

    def __init__(self, limiter: Limiter, key: Hashable) -> None:
        self.limiter, self.key = limiter, key

    def slot(self, priority, *, max_wait=None):  # type: ignore[no-untyped-def]
        return self.limiter.slot(priority, max_wait=max_wait, key=self.key)

    async def aclose(self) -> None:
        await self.limiter.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("keyed", [False, True], ids=["default-bucket", "keyed"])
@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.name in ASYNC], ids=lambda s: s.name
)
async def test_the_limiter_keeps_the_scenarios(scenario: Scenario, keyed: bool) -> None:
    def factory(clock: object, process: int) -> LimiterUnderTest:
        limiter = Limiter(clock=clock)  # type: ignore[arg-type]
        return _Keyed(limiter, ("user", process)) if keyed else limiter

    async def forget(limiters: list[LimiterUnderTest]) -> None:
        for lim in limiters:
            inner = lim.limiter if isinstance(lim, _Keyed) else lim
            assert isinstance(inner, Limiter)
            inner._forget_all()

    (await run_async(scenario, factory, forget=forget)).check(scenario)
