"""Local HTTP emulators of the destination APIs, for tests, the demo and the benchmarks.

``Emulators`` runs both in-process; ``usage-consumer emulate`` (``runner.main``) runs them as a process
that other processes drive through the ``/_emulator/`` control API.
"""

from consumer.testing.emulators.common import Fault, RecordedRequest
from consumer.testing.emulators.freshpaint import FreshpaintEmulator
from consumer.testing.emulators.freshsuccess import FreshsuccessEmulator, check_event
from consumer.testing.emulators.runner import Emulators, EmulatorServers

__all__ = [
    "EmulatorServers",
    "Emulators",
    "Fault",
    "FreshpaintEmulator",
    "FreshsuccessEmulator",
    "RecordedRequest",
    "check_event",
]
