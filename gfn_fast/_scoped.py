"""Switches with a process-wide value and per-context overrides. A `with` block sets the value
for the code that runs inside it, in its own thread (or asyncio task) only, through
contextvars: blocks that overlap in several threads cannot leave each other's value behind, as
a global saved and restored by each block could (two threads' `with validation(False)` blocks
left validation off for the process when they exited in the order they entered)."""

import contextlib
import contextvars


class Switch:
    def __init__(self, name: str, default):
        self.default = default  # the process-wide value
        self._override = contextvars.ContextVar(name, default=None)

    def get(self):
        value = self._override.get()
        return self.default if value is None else value

    def set_here(self, value) -> contextvars.Token:
        """Set for the calling context, until `reset(token)` (if ever)."""
        return self._override.set(value)

    def reset(self, token: contextvars.Token) -> None:
        self._override.reset(token)

    @contextlib.contextmanager
    def scoped(self, value):
        token = self._override.set(value)
        try:
            yield
        finally:
            self._override.reset(token)
