"""Settings and fixtures shared by every test."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import settings

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

# A property test checks what each example gives, not how fast it runs: on a loaded machine
# one slow example must not fail it (hypothesis's default deadline is 200 ms an example).
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

# The Ctrl-C tests need SIGINT to reach Python. A shell without job control starts a
# background job (`make test &` in a script) with SIGINT ignored, which Python keeps, as
# do the processes the tests start: the default handler is given back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The tests' servers are on loopback: a proxy of the machine's environment (HTTP_PROXY with
# no NO_PROXY for 127.0.0.1) would get their requests, httpx reading it as clients do.
for _name in [n for n in os.environ if n.lower() in _PROXY_VARIABLES]:
    del os.environ[_name]


# Applications on Python 3.12+ may set asyncio's eager task factory, under which a new task
# runs up to its first suspension inside `create_task`, before its creator has it back.
TASK_FACTORIES: list[Any] = [None]
if sys.version_info >= (3, 12):
    TASK_FACTORIES.append(asyncio.eager_task_factory)


@pytest.fixture(params=TASK_FACTORIES, ids=lambda f: "eager" if f else "lazy")
async def task_factory(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Runs the test with the default task factory and, from Python 3.12, the eager one."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(request.param)
    yield
    loop.set_task_factory(None)
