// Tensors between the Python tests and Node: raw little-endian files described as {file, dims, type}.
import fs from 'node:fs';
import path from 'node:path';

const ARRAYS = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array, bool: Uint8Array };

export function readSpec() {
  return JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
}

// {name: {file, dims, type}} -> {name: [type, typed array, dims]}
export function readInputs(inputs) {
  const out = {};
  for (const [name, { file, dims, type }] of Object.entries(inputs)) {
    const bytes = fs.readFileSync(file);
    const Array_ = ARRAYS[type];
    out[name] = [type, new Array_(bytes.buffer, bytes.byteOffset, bytes.byteLength / Array_.BYTES_PER_ELEMENT), dims];
  }
  return out;
}

// Any tensor-like value (transformers.js Tensor or onnxruntime Tensor) to a file in `dir`.
export function writeTensor(dir, name, tensor) {
  const file = path.join(dir, `${name}.bin`);
  const data = tensor.data ?? tensor.cpuData;
  fs.writeFileSync(file, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  return { file, dims: Array.from(tensor.dims), type: tensor.type };
}
