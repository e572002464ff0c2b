"""Settings shared by every test."""

from hypothesis import settings

# A property test checks what each example gives, not how fast it runs: on a loaded machine
# one slow example must not fail it (hypothesis's default deadline is 200 ms an example).
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")
