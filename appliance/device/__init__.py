"""The appliance's own hardware: status LEDs, button, cellular modem, thermal governor.

Each module is a small component with start()/stop() that reads or writes the status
hub. Nothing here touches hardware at import: gpiozero and pyserial are imported where
a component starts, and every path or tool location can be injected for tests.
"""
