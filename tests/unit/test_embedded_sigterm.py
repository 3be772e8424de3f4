"""SIGTERM unwinds like Ctrl-C inside `sigterm_as_interrupt`, so the servers a command started get stopped."""

from __future__ import annotations

import os
import signal

import pytest

from tooling.embedded.process import sigterm_as_interrupt


def test_sigterm_raises_keyboard_interrupt_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    unwound = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            unwound.append(True)
    assert unwound == [True]
    assert signal.getsignal(signal.SIGTERM) == before
