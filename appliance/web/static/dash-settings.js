// The dash.js (5.2) settings of the appliance's live page (/?player=dash), for LL-DASH on
// the LAN. bench/glass_to_glass.py --player dash measures them: change a value here only
// with its figures.
//
// The target latency and the catch-up rates are deliberately not here: the MPD's
// ServiceDescription carries them (Latency@target/@max, PlaybackRate@min/@max, derived
// from the part duration in appliance/package/dash.py), so one place decides them and
// any DASH player gets the same. dash.js switches to low-latency mode by itself because
// the SegmentTemplate has availabilityTimeComplete="false" (chunked segments, fetched
// with the Fetch API and appended chunk by chunk).

export const dashSettings = {
  streaming: {
    delay: {
      // liveDelay / liveDelayFragmentCount unset: the ServiceDescription's target wins.
      useSuggestedPresentationDelay: true,
    },
    liveCatchup: {
      // On from the start (dash.js would also turn it on with low-latency mode): speed up
      // towards the target, slow down when playing closer than it (rates from the MPD).
      enabled: true,
      mode: 'liveCatchupModeDefault',
    },
    buffer: {
      // Live never seeks far back: keep 4 s behind the playhead (default 20 s), as the
      // hls.js page does, so a phone's MSE quota is never reached.
      bufferToKeep: 4,
      bufferPruningInterval: 4,
    },
    // Keep the appliance's own clock (UTCTiming in the MPD): on a closed LAN the default
    // fallback time server is unreachable.
    utcSynchronization: {
      enabled: true,
      useManifestDateHeaderTimeSource: false,
    },
  },
};
