/* The reading room's DICOM parsing, from dwv (bundled by `npm run build`, see
 * package.json; the bundle is static/reading/dicom.bundle.js): the stored, de-identified
 * DICOM file's pixel data as modality values (after Rescale Slope/Intercept: HU for CT),
 * for window/level in the viewer. */
import { DicomParser } from "dwv";

function first(elements, tag) {
  var element = elements[tag];
  if (!element || !element.value || element.value.length === 0) return null;
  return element.value[0];
}

function number(elements, tag, fallback) {
  var value = parseFloat(first(elements, tag));
  return isFinite(value) ? value : fallback;
}

window.cxrDicom = {
  library: "dwv",
  parse: function (buffer) {
    var parser = new DicomParser();
    parser.parse(buffer);
    var elements = parser.getDicomElements();
    var rows = number(elements, "00280010", 0);
    var columns = number(elements, "00280011", 0);
    var pixels = elements["7FE00010"] && elements["7FE00010"].value[0];
    if (!rows || !columns || !pixels || pixels.length < rows * columns) {
      throw new Error("The DICOM file has no single-frame grayscale pixel data dwv can read.");
    }
    var slope = number(elements, "00281053", 1);
    var intercept = number(elements, "00281052", 0);
    var values = new Float32Array(rows * columns);
    for (var i = 0; i < values.length; i++) values[i] = pixels[i] * slope + intercept;
    return { width: columns, height: rows, values: values };
  }
};
