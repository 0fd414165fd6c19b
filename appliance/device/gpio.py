"""The gpiozero pin factory every GPIO device of ours uses."""

from __future__ import annotations

import logging
import warnings
from typing import Any

log = logging.getLogger(__name__)


def pin_factory() -> tuple[Any, bool]:
    """(gpiozero's pin factory, whether it is a mock).

    The one set on gpiozero.Device (a test's MockFactory, or GPIOZERO_PIN_FACTORY's),
    else gpiozero's default for this board (lgpio on current Raspberry Pi OS). Where no
    real one loads, not a Pi, the mock factory, so the LEDs and button run as stand-ins
    and the status says so (SPEC: "mock GPIO" off the device).
    """
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory
    from gpiozero.pins.mock import MockFactory

    if Device.pin_factory is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one PinFactoryFallback per factory tried
            try:
                Device.ensure_pin_factory()
            except BadPinFactory:
                log.warning("gpio: no GPIO on this machine; LEDs and button are mock pins")
                Device.pin_factory = MockFactory()
    factory = Device.pin_factory
    return factory, isinstance(factory, MockFactory)
