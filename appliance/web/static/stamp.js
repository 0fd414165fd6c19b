// Reads the latency stamp of SPEC.md ("Latency stamp") from a decoded video frame.
//
// With c = floor(frameWidth / 64): 50 square cells of side c in one row, the top-left
// of cell i at (c*(i+1), c). Cell 0 is white, cell 1 black; cells 2..49 hold the
// capture wall-clock time in ms since the Unix epoch, 48 bits, MSB first, white = 1.
// The reader samples the middle of each cell and thresholds halfway between cells 0
// and 1, so it works at any rung size and survives the encoder's level shifts.

const CELLS = 50;
const BITS = 48;
// Cells 0 and 1 must differ at least this much in luma, or the frame carries no stamp
// (a camera picture, a frame still black at start): nominally >= 160 (200 vs 40).
const MIN_CONTRAST = 80;

/** Cell side in pixels for a frame of this width (0: too small to carry a stamp). */
export function cellSize(frameWidth) {
  return Math.floor(frameWidth / 64);
}

/**
 * The top-left region of the frame, at native scale, that holds the whole stamp:
 * drawing only this much keeps a per-frame read cheap (about 1040 x 40 px at 720p).
 */
export function stampRegion(frameWidth) {
  const c = cellSize(frameWidth);
  return { width: c * (CELLS + 1), height: c * 2 };
}

/** Mean full-range luma (BT.601 weights) of a small square around (cx, cy). */
function lumaAt(data, stride, cx, cy, half) {
  let sum = 0;
  let n = 0;
  for (let y = cy - half; y <= cy + half; y++) {
    for (let x = cx - half; x <= cx + half; x++) {
      const i = (y * stride + x) * 4;
      sum += 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      n++;
    }
  }
  return sum / n;
}

/**
 * Decodes the stamp from RGBA pixels of the frame's top-left region.
 * @param {{data: Uint8ClampedArray, width: number, height: number}} image
 *   pixels starting at the frame's (0, 0), at the frame's native scale
 * @param {number} frameWidth the decoded frame's width (it sets the cell size)
 * @returns {number|null} capture time in ms since the epoch, or null if no stamp
 */
export function decodeStamp(image, frameWidth) {
  const c = cellSize(frameWidth);
  const region = stampRegion(frameWidth);
  if (c < 2 || image.width < region.width || image.height < region.height) return null;
  // Average the central quarter of a cell: the middle, but not a single pixel that a
  // compression artefact can flip.
  const half = Math.max(0, Math.floor(c / 8));
  const mid = (i) => lumaAt(image.data, image.width, c * (i + 1) + (c >> 1), c + (c >> 1), half);
  const white = mid(0);
  const black = mid(1);
  if (white - black < MIN_CONTRAST) return null;
  const threshold = (white + black) / 2;
  // 48 bits exceed 32-bit integer ops: accumulate in a double (exact up to 2^53).
  let ms = 0;
  for (let bit = 0; bit < BITS; bit++) {
    ms = ms * 2 + (mid(2 + bit) > threshold ? 1 : 0);
  }
  return ms > 0 ? ms : null;
}

/**
 * Draws the stamp region of `source` (a <video> showing a frame, or a VideoFrame) into
 * `canvas` and decodes it.
 * @param {CanvasImageSource} source
 * @param {number} frameWidth the source's intrinsic width (video.videoWidth)
 * @param {HTMLCanvasElement|OffscreenCanvas} canvas scratch canvas, reused across calls
 * @returns {number|null}
 */
export function readStamp(source, frameWidth, canvas) {
  const region = stampRegion(frameWidth);
  if (region.width === 0) return null;
  if (canvas.width !== region.width || canvas.height !== region.height) {
    canvas.width = region.width;
    canvas.height = region.height;
  }
  // willReadFrequently keeps the canvas in CPU memory: getImageData every frame
  // would otherwise read back from the GPU each time.
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(source, 0, 0, region.width, region.height, 0, 0, region.width, region.height);
  return decodeStamp(ctx.getImageData(0, 0, region.width, region.height), frameWidth);
}
