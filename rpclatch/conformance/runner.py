"""Running the selected cases against one server, one :class:`~.probe.Session` per case.

A case that raises :class:`~.probe.NoContext` is OMITted (it needed a context the server did not
give), :class:`~.probe.Unsupported` makes it NOT-SUPPORTED; a connection that cannot be opened, a
timeout or an unexpected exception in a case FAILs that case (a MUST) with the reason -- the run
goes on. Only :class:`~.probe.LocalGssError` (this side cannot make a context at all: no ticket,
unknown target) stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from rpclatch.conformance.model import CaseResult, Finding, Outcome, Report
from rpclatch.conformance.probe import LocalGssError, NoContext, ProbeConfig, Session, Unsupported
from rpclatch.conformance.registry import Case
from rpclatch.gss.errors import GssError
from rpclatch.gss.provider import Provider
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)


async def run_case(c: Case, config: ProbeConfig, provider: Provider) -> CaseResult:
    """One case in its own session (contexts destroyed, connections closed afterwards)."""
    if c.run is None:
        return CaseResult.of(c.spec, Finding(Outcome.OMIT, c.omit))
    session = Session(config, provider)
    try:
        finding = await c.run(session)
    except NoContext as exc:
        finding = Finding(Outcome.OMIT, str(exc))
    except Unsupported as exc:
        finding = Finding(Outcome.NOT_SUPPORTED, str(exc))
    except LocalGssError:
        raise
    except TimeoutError:
        finding = Finding(Outcome.FAIL, "connection to the server timed out")
    except OSError as exc:
        why = exc.strerror or repr(exc)
        finding = Finding(Outcome.FAIL, f"connection to the server failed: {why}")
    except (GssError, XdrError) as exc:
        finding = Finding(Outcome.FAIL, f"{type(exc).__name__}: {exc}")
    finally:
        await session.close()
    log.info("%s %s: %s", c.spec.id, finding.outcome.value, finding.reason)
    return CaseResult.of(c.spec, finding)


async def run(
    cases: Sequence[Case],
    config: ProbeConfig,
    provider: Provider,
    *,
    on_result: Callable[[CaseResult], None] | None = None,
) -> Report:
    """Every case of ``cases`` in order; ``on_result`` sees each result as it comes."""
    results = []
    for c in cases:
        result = await run_case(c, config, provider)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return Report(
        server=f"{config.host}:{config.port}",
        prog=config.prog,
        vers=config.vers,
        proc=config.proc,
        target=config.target,
        service=config.service.sec_name,
        results=tuple(results),
        proto=config.proto,
    )
