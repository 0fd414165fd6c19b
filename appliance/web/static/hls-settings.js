// The hls.js configuration of the appliance's own live page, tuned for low latency on
// the LAN, and the page's own live catch-up. Third-party pages get hls.js's defaults;
// bench/glass_to_glass.py measures both, so change a value here only with its figures.

export const hlsConfig = {
  // Load EXT-X-PARTs and use blocking playlist reload (_HLS_msn/_HLS_part): without it
  // hls.js waits for whole 2 s segments and plays several seconds behind.
  lowLatencyMode: true,

  // Target latency: left unset so hls.js aims at the playlist's PART-HOLD-BACK (3 parts),
  // which the packager derives from part_s: one place decides it, and a shorter part
  // duration lowers the page's latency without touching this file.
  // liveSyncDuration: undefined,

  // hls.js's own catch-up only speeds up while more than 1 s is buffered ahead, which
  // never happens at a 0.6 s target: the page lands about 0.4 s behind its target at
  // start and stays there. With any rate above 1 hls.js also resets the rate to 1 on each
  // timeupdate, fighting any other controller, so it is off and `catchUp` below does it.
  maxLiveSyncPlaybackRate: 1,

  // hls.js adds this to the target latency after each stall (default 1 s, for good).
  // One part is enough margin on a LAN; a stall-prone link still backs off step by step.
  liveSyncOnStallIncrease: 0.2,

  // Live never seeks far back: keep 4 s behind the playhead (default: everything, which
  // on a phone grows until the MSE quota evicts at a bad moment).
  backBufferLength: 4,

  // The forward buffer cannot exceed the target latency on a live edge anyway; a small
  // cap keeps memory and ABR honest if the page falls far behind.
  maxBufferLength: 4,

  // Start from the newest parts of the first playlist rather than a whole segment back.
  initialLiveManifestSize: 1,

  // Detect a stall with buffer still ahead (a decode hiccup) sooner than the 2 s default
  // so the gap controller nudges past it quickly.
  highBufferWatchdogPeriod: 1,

  // hls.js's ESM build has no inline worker; CMAF needs no transmuxing (passthrough), so
  // the main thread is fine and saves a postMessage hop per part.
  enableWorker: false,
};

// Live catch-up done by the page (hls-player.js): play slightly faster while hls.js's latency
// is above its target, as long as enough is buffered that speeding up cannot stall.
export const catchUp = {
  // At most 20 % faster: hardly visible in a live view, and browsers keep audio pitch.
  maxRate: 1.2,
  // Rate = 1 + gain x (seconds over target), capped: 0.4 s over plays at 1.2x and the
  // gap closes in about 2 s; a small excess closes gently instead of jerking.
  gain: 0.5,
  // Start speeding up at this much over target, back to 1x within this much (hysteresis,
  // so jitter in the latency estimate does not flip the rate every tick).
  startAboveS: 0.1,
  stopWithinS: 0.03,
  // Never speed up with less than this buffered ahead: that would trade latency for stalls.
  minBufferAheadS: 0.3,
  intervalMs: 250,
};
