"""Settings shared by every test."""

import signal

from hypothesis import settings

# A property test checks what each example gives, not how fast it runs: on a loaded machine
# one slow example must not fail it (hypothesis's default deadline is 200 ms an example).
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

# The Ctrl-C tests need SIGINT to reach Python. A shell without job control starts a
# background job (`make test &` in a script) with SIGINT ignored, which Python keeps, as
# do the processes the tests start: the default handler is given back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
