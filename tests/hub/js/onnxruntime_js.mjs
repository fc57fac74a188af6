// Load ONNX files in onnxruntime-node and onnxruntime-web (WASM) and run them on the same inputs:
//   node onnxruntime_js.mjs SPEC.json
// SPEC: {files: [paths], inputs: {name: {file, dims, type}}, out: dir, threads: n}
// Prints JSON: {runtime: {file: {output: {file, dims, type}} or {error}}}.
import fs from 'node:fs';
import * as ortNode from 'onnxruntime-node';
import * as ortWeb from 'onnxruntime-web';
import { readSpec, readInputs, writeTensor } from './tensors.mjs';

const spec = readSpec();
ortWeb.env.wasm.numThreads = spec.threads ?? 1;
const runtimes = {
  'onnxruntime-node': [ortNode, (file) => ortNode.InferenceSession.create(file, { executionProviders: ['cpu'] })],
  'onnxruntime-web': [ortWeb, (file) => ortWeb.InferenceSession.create(fs.readFileSync(file), { executionProviders: ['wasm'] })],
};
const inputs = readInputs(spec.inputs);
const result = {};
for (const [runtime, [ort, open]] of Object.entries(runtimes)) {
  result[runtime] = {};
  for (const [i, file] of spec.files.entries()) {
    try {
      const session = await open(file);
      const feeds = {};
      for (const [key, [type, data, dims]] of Object.entries(inputs)) feeds[key] = new ort.Tensor(type, data, dims);
      const outputs = await session.run(feeds);
      const written = {};
      for (const [key, value] of Object.entries(outputs)) written[key] = writeTensor(spec.out, `${runtime}-${i}-${key}`, value);
      result[runtime][file] = written;
      await session.release();
    } catch (error) {
      result[runtime][file] = { error: String(error?.message ?? error).split('\n')[0] };
    }
  }
}
console.log(JSON.stringify(result));
