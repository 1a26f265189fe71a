// A folder picked or dropped in the browser, sent as one uncompressed tar
// (ustar): the gateway then takes it exactly like an uploaded archive, with the
// same limits. The Blob only references the files: nothing is read up front.

const BLOCK = 512;
const encoder = new TextEncoder();

function field(header, offset, length, text) {
  header.set(encoder.encode(text).subarray(0, length), offset);
}

function octal(header, offset, length, value) {
  field(header, offset, length, value.toString(8).padStart(length - 1, "0") + "\0");
}

// ustar keeps a path in name (100 bytes) and prefix (155 bytes), split at a '/'.
function splitPath(path) {
  const bytes = encoder.encode(path);
  if (bytes.length <= 100) return ["", path];
  for (let i = path.indexOf("/"); i > 0; i = path.indexOf("/", i + 1)) {
    const prefix = path.slice(0, i), name = path.slice(i + 1);
    if (encoder.encode(prefix).length <= 155 && encoder.encode(name).length <= 100) return [prefix, name];
  }
  return null;
}

function header(path, size, mtimeMs) {
  const parts = splitPath(path);
  if (!parts) return null;
  const h = new Uint8Array(BLOCK);
  field(h, 0, 100, parts[1]);
  octal(h, 100, 8, 0o644);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, Math.floor(mtimeMs / 1000));
  field(h, 148, 8, "        "); // the checksum counts its own field as spaces
  field(h, 156, 1, "0");
  field(h, 257, 6, "ustar\0");
  field(h, 263, 2, "00");
  field(h, 345, 155, parts[0]);
  const sum = h.reduce((a, b) => a + b, 0);
  field(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

// files: [{path, file}] -> {blob, count, refused: [paths too long for ustar]}
export function tarOf(files) {
  const parts = [];
  const refused = [];
  for (const { path, file } of files) {
    const h = header(path, file.size, file.lastModified || Date.now());
    if (!h) { refused.push(path); continue; }
    parts.push(h, file);
    const pad = (BLOCK - (file.size % BLOCK)) % BLOCK;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(2 * BLOCK));
  return { blob: new Blob(parts, { type: "application/x-tar" }), count: files.length - refused.length, refused };
}

// The files under dropped folders (DataTransferItem.webkitGetAsEntry), with paths.
export async function droppedFiles(items) {
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      out.push({ path: entry.fullPath.replace(/^\//, ""), file: await new Promise((ok, fail) => entry.file(ok, fail)) });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const e of batch) await walk(e);
      }
    }
  };
  for (const entry of items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean)) await walk(entry);
  return out;
}
