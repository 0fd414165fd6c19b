// The WebRTC preview over WHEP (POST /api/v1/whep, an SDP offer in, 201 + the SDP
// answer and a Location to DELETE when done): a plain RTCPeerConnection, receive only.
// The server sends no trickle ICE: the offer carries every candidate and so does the
// answer. When WHEP cannot play here (no WebRTC, the endpoint missing or full, no
// picture in time) the page falls back to LL-HLS: `page.fallback(reason)`.

import { csrfHeaders, knownCsrfHeaders } from './api.js';

const ENDPOINT = '/api/v1/whep';
const GATHER_MS = 2000; // host candidates on a LAN come in a few ms
const FIRST_FRAME_MS = 10000; // connect + up to one segment to the next IDR, with room
const DISCONNECTED_MS = 5000; // 'disconnected' for this long counts as a failure
const RETRY_MS = 2000;
const MAX_RETRIES = 3; // after a session that played: new sessions before falling back
const STATS_MS = 1000;

/**
 * @param {object} player window.player: gets .pc, .whep, .latency() and .whepStats()
 * @param {object} hooks the page's setState / error / play / retryMs
 * @param {{fallback: (reason: string) => void}} page
 */
export function startPlayer(player, hooks, page) {
  if (typeof RTCPeerConnection !== 'function') {
    page.fallback('this browser has no WebRTC');
    return;
  }
  player.whep = null;
  player.latency = () => (player.whep ? player.whep.latencyS : null);
  player.whepStats = () => inboundStats(player.pc);
  const ctl = { retries: 0, stopped: false, played: false };
  addEventListener('pagehide', () => {
    ctl.stopped = true;
    endSession(player, true);
  });
  // Back from the back-forward cache: the session ended on the way in, start afresh.
  addEventListener('pageshow', (event) => {
    if (event.persisted) location.reload();
  });
  connect(player, hooks, page, ctl);
}

/** inbound-rtp per kind with its negotiated codec, as tests and the readouts use them. */
async function inboundStats(pc) {
  const out = {};
  if (!pc) return out;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const codec = report.get(s.codecId);
    out[s.kind] = {
      framesDecoded: s.framesDecoded, framesDropped: s.framesDropped,
      frameWidth: s.frameWidth, frameHeight: s.frameHeight,
      packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
      totalSamplesReceived: s.totalSamplesReceived,
      jitterBufferDelay: s.jitterBufferDelay, jitterBufferEmittedCount: s.jitterBufferEmittedCount,
      mimeType: codec && codec.mimeType,
    };
  });
  return out;
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') {
      resolve();
      return;
    }
    const timer = setTimeout(resolve, GATHER_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/** Close the peer connection and DELETE the session, so the server frees its slot. */
function endSession(player, unloading = false) {
  const w = player.whep;
  if (player.pc) {
    player.pc.close();
    player.pc = null;
  }
  if (w && w.location && !w.deleted) {
    w.deleted = true;
    // keepalive: the DELETE still goes out while the page unloads (the token is known:
    // the POST that made the session sent it).
    fetch(w.location, { method: 'DELETE', headers: knownCsrfHeaders(), keepalive: unloading })
      .catch(() => {});
  }
}

async function connect(player, hooks, page, ctl) {
  const w = {
    status: null, location: null, error: null, connection: 'new', deleted: false,
    latencyS: null, framesDecoded: 0, played: false,
  };
  player.whep = w;
  player.kind = 'whep';
  const video = player.video;
  let failed = false;
  const timers = { poll: 0, firstFrame: 0, dropped: 0 };

  const fail = (reason) => {
    if (failed || ctl.stopped) return;
    failed = true;
    Object.values(timers).forEach(clearTimeout);
    w.error = reason;
    hooks.error(`whep: ${reason}`);
    endSession(player);
    video.srcObject = null;
    // A preview that played and dropped gets new sessions; one that never played here
    // (or whose new sessions do not play either) gives way to LL-HLS.
    if (ctl.played && ctl.retries < MAX_RETRIES) {
      ctl.retries++;
      hooks.setState(`preview lost (${reason}), reconnecting`, 'warn');
      setTimeout(() => connect(player, hooks, page, ctl), RETRY_MS);
    } else {
      page.fallback(reason);
    }
  };

  let pc;
  try {
    pc = new RTCPeerConnection({ iceServers: [] });
  } catch (err) {
    fail(`no peer connection: ${err}`);
    return;
  }
  player.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const stream = new MediaStream();
  pc.addEventListener('track', (event) => {
    stream.addTrack(event.track);
    if (video.srcObject !== stream) video.srcObject = stream;
  });
  pc.addEventListener('connectionstatechange', () => {
    w.connection = pc.connectionState;
    if (pc.connectionState === 'failed') fail('the WebRTC connection failed');
    if (pc.connectionState === 'disconnected') {
      clearTimeout(timers.dropped);
      timers.dropped = setTimeout(() => {
        if (pc.connectionState === 'disconnected') fail('the WebRTC connection dropped');
      }, DISCONNECTED_MS);
    }
  });

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const resp = await fetch(ENDPOINT, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...(await csrfHeaders()) },
      body: pc.localDescription.sdp,
    });
    w.status = resp.status;
    const body = await resp.text();
    if (resp.status !== 201) {
      let message = body;
      try {
        message = JSON.parse(body).error || body;
      } catch {
        // not JSON: the text as it is
      }
      fail(`WHEP answered ${resp.status}${message ? `: ${message}` : ''}`);
      return;
    }
    const where = resp.headers.get('Location');
    w.location = where ? new URL(where, location.href).pathname : null;
    if (ctl.stopped || failed) {
      endSession(player);
      return;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
  } catch (err) {
    fail(`WHEP negotiation failed: ${err && err.message ? err.message : err}`);
    return;
  }
  hooks.play();
  timers.firstFrame = setTimeout(() => {
    if (!w.framesDecoded) fail(`no picture within ${FIRST_FRAME_MS / 1000} s`);
  }, FIRST_FRAME_MS);

  // Once a second: frames decoded (the first one ends the wait above) and the receiver's
  // latency estimate, the jitter buffer's mean delay over the last second plus half the
  // round trip.
  let prev = null;
  const poll = async () => {
    if (failed || ctl.stopped || player.pc !== pc) return;
    try {
      const report = await pc.getStats();
      let inbound = null;
      let rtt = null;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
          rtt = s.currentRoundTripTime;
        }
      });
      if (inbound) {
        w.framesDecoded = inbound.framesDecoded || 0;
        if (w.framesDecoded > 0 && !w.played) {
          w.played = ctl.played = true;
          ctl.retries = 0;
        }
        if (prev && inbound.jitterBufferEmittedCount > prev.jitterBufferEmittedCount) {
          const delay = (inbound.jitterBufferDelay - prev.jitterBufferDelay) /
            (inbound.jitterBufferEmittedCount - prev.jitterBufferEmittedCount);
          w.latencyS = delay + (rtt || 0) / 2;
        }
        prev = inbound;
      }
    } catch {
      // the connection closed under us: the state handler says why
    }
    timers.poll = setTimeout(poll, STATS_MS);
  };
  poll();
}
