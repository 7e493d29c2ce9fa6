/* The reading room's DICOM parsing, by dicom-parser (MIT; bundled by `npm run build`, see
 * package.json; the bundle is static/reading/dicom.bundle.js): the stored, de-identified
 * DICOM file's pixel data as modality values (after Rescale Slope/Intercept: HU for CT),
 * for window/level in the viewer, and the header elements those values depend on.
 *
 * Native (uncompressed) little-endian pixel data only: dicom-parser decodes no compressed
 * transfer syntax (JPEG, JPEG 2000, RLE, deflate), so parse() throws for one, as for
 * anything else it cannot read as one grayscale frame, and the viewer then reads the
 * server's decoded copy of the same values. */
import { parseDicom } from "dicom-parser";

var NATIVE = {
  "1.2.840.10008.1.2": "implicit VR little endian",
  "1.2.840.10008.1.2.1": "explicit VR little endian"
};

function text(dataSet, tag) {
  var value = dataSet.string(tag);
  return value === undefined || value === "" ? null : value;
}

function number(dataSet, tag, fallback, index) {
  var value = parseFloat(dataSet.string(tag, index || 0));
  return isFinite(value) ? value : fallback;
}

function unsigned(dataSet, tag) {
  return dataSet.elements[tag] ? dataSet.uint16(tag) : 0;
}

// The stored values as read from the file, bits above Bits Stored ignored and, for signed
// data (Pixel Representation 1), sign-extended from Bits Stored.
function stored(dataSet, element, count, bitsAllocated, bitsStored, signed) {
  var bytes = bitsAllocated / 8;
  var source = dataSet.byteArray;
  var offset = source.byteOffset + element.dataOffset;
  var buffer = source.buffer;
  if (offset % bytes) {
    buffer = buffer.slice(offset, offset + count * bytes);
    offset = 0;
  }
  var raw = bitsAllocated === 16 ? new Uint16Array(buffer, offset, count) : new Uint8Array(buffer, offset, count);
  if (bitsStored === bitsAllocated) {
    if (!signed) return raw;
    return bitsAllocated === 16 ? new Int16Array(raw.buffer, raw.byteOffset, count) : new Int8Array(raw.buffer, raw.byteOffset, count);
  }
  var out = signed ? (bitsAllocated === 16 ? new Int16Array(count) : new Int8Array(count))
                   : (bitsAllocated === 16 ? new Uint16Array(count) : new Uint8Array(count));
  var shift = 32 - bitsStored, mask = (1 << bitsStored) - 1;
  for (var i = 0; i < count; i++) out[i] = signed ? (raw[i] << shift) >> shift : raw[i] & mask;
  return out;
}

function parse(buffer) {
  var dataSet = parseDicom(new Uint8Array(buffer));
  var syntax = text(dataSet, "x00020010");
  if (!NATIVE[syntax]) {
    throw new Error("Transfer syntax " + syntax + " is not native little-endian pixel data; dicom-parser decodes none.");
  }
  var tags = {
    transferSyntax: syntax,
    rows: unsigned(dataSet, "x00280010"),
    columns: unsigned(dataSet, "x00280011"),
    samplesPerPixel: unsigned(dataSet, "x00280002") || 1,
    frames: number(dataSet, "x00280008", 1),
    bitsAllocated: unsigned(dataSet, "x00280100"),
    bitsStored: unsigned(dataSet, "x00280101"),
    pixelRepresentation: unsigned(dataSet, "x00280103"),
    photometric: text(dataSet, "x00280004"),
    rescaleSlope: number(dataSet, "x00281053", 1),
    rescaleIntercept: number(dataSet, "x00281052", 0),
    windowCentre: number(dataSet, "x00281050", null),
    windowWidth: number(dataSet, "x00281051", null),
    pixelSpacing: null
  };
  var spacing = dataSet.elements.x00280030 ? "x00280030" : "x00181164";
  if (dataSet.elements[spacing]) {
    tags.pixelSpacing = [number(dataSet, spacing, null, 0), number(dataSet, spacing, null, 1)];
  }
  var rows = tags.rows, columns = tags.columns, count = rows * columns;
  var bitsAllocated = tags.bitsAllocated, bitsStored = tags.bitsStored || bitsAllocated;
  var element = dataSet.elements.x7fe00010;
  if (!rows || !columns || !element || element.encapsulatedPixelData
      || tags.samplesPerPixel !== 1 || tags.frames !== 1
      || (bitsAllocated !== 8 && bitsAllocated !== 16) || bitsStored > bitsAllocated
      || element.length < count * bitsAllocated / 8) {
    throw new Error("The DICOM file has no single-frame grayscale pixel data of 8 or 16 bits.");
  }
  var pixels = stored(dataSet, element, count, bitsAllocated, bitsStored, tags.pixelRepresentation === 1);
  // As the server's copy (apps/reading/pixels.py): rescaled only when the file gives both
  // Rescale Slope and Intercept, in float32 arithmetic (Math.fround, then the store).
  var rescaled = !!(dataSet.elements.x00281053 && dataSet.elements.x00281052);
  var slope = Math.fround(rescaled ? tags.rescaleSlope : 1), intercept = Math.fround(rescaled ? tags.rescaleIntercept : 0);
  var values = new Float32Array(count);
  for (var i = 0; i < count; i++) values[i] = Math.fround(pixels[i] * slope) + intercept;
  return { width: columns, height: rows, values: values, pixels: pixels, tags: tags };
}

window.cxrDicom = { library: "dicom-parser", parse: parse };
