// The virtual LEDs: the two LEDs of SPEC's "Status LEDs" table as the appliance drives
// them. /api/v1/status carries each LED's mode (`leds`, from appliance/device/leds.py, the
// table the GPIO driver reads too); style.css draws the modes (steady, blink at 0.5, 1 or
// 4 Hz, alternate at 2 Hz with the other LED in antiphase).

const MODE_TEXT = {
  off: 'off',
  on: 'on',
  'blink-0.5hz': 'blinking at 0.5 Hz',
  'blink-1hz': 'blinking at 1 Hz',
  'blink-4hz': 'blinking at 4 Hz',
  'alternate-2hz': 'alternating at 2 Hz',
};

/**
 * Show `leds` ({green, red} modes) on the elements #led-green and #led-red.
 * An unknown mode shows as off, and says so.
 */
export function showLeds(leds) {
  const parts = [];
  for (const colour of ['green', 'red']) {
    const el = document.getElementById(`led-${colour}`);
    if (!el) continue;
    const mode = leds && MODE_TEXT[leds[colour]] ? leds[colour] : 'off';
    const text = leds && leds[colour] && !MODE_TEXT[leds[colour]]
      ? `unknown mode ${leds[colour]}` : MODE_TEXT[mode];
    if (el.dataset.mode !== mode) {
      el.dataset.mode = mode;
      // Restart the blink (drawn on ::after) so that an alternating pair keeps its phase.
      el.getAnimations({ subtree: true }).forEach((a) => { a.currentTime = 0; });
    }
    el.title = `${colour} LED: ${text}`;
    parts.push(`${colour} ${text}`);
  }
  const group = document.getElementById('leds');
  if (group) group.setAttribute('aria-label', `Status LEDs: ${parts.join(', ')}`);
}
