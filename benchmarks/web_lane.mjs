// Time ONNX files in onnxruntime-web (WASM) in Node, interleaved in one process: benchmarks/web_lane.py drives it.
//   node benchmarks/web_lane.mjs SPEC.json
// SPEC: {files: {name: path}, input: {file, dims}, reference: {name: {file, dims}}, threads, rounds, runs, warmup}
// Prints JSON: {name: {times_ms: [...], max_abs_diff, error}} plus the onnxruntime-web build facts.
import fs from 'node:fs';
import { createRequire } from 'node:module';

// onnxruntime-web is installed with the hub tests' clients (tests/hub/js): npm ci --ignore-scripts there.
const require = createRequire(new URL('../tests/hub/js/package.json', import.meta.url));
const ort = require('onnxruntime-web');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
ort.env.wasm.numThreads = spec.threads;

const floats = ({ file }) => {
  const bytes = fs.readFileSync(file);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
};
const input = new ort.Tensor('float32', floats(spec.input), spec.input.dims);
const result = { onnxruntime_web: ort.env.versions?.web ?? null, threads: spec.threads,
                 crossOriginIsolated: globalThis.crossOriginIsolated ?? null, candidates: {} };
const sessions = {};
for (const [name, file] of Object.entries(spec.files)) {
  try {
    const started = performance.now();
    sessions[name] = await ort.InferenceSession.create(fs.readFileSync(file), { executionProviders: ['wasm'] });
    const outputs = await sessions[name].run({ pixel_values: input });
    const output = outputs[sessions[name].outputNames[0]].data;
    const reference = floats(spec.reference[name]);
    let diff = 0;
    for (let i = 0; i < reference.length; i++) diff = Math.max(diff, Math.abs(output[i] - reference[i]));
    result.candidates[name] = { load_ms: performance.now() - started, max_abs_diff: diff, times_ms: [] };
  } catch (error) {
    result.candidates[name] = { error: String(error?.message ?? error).split('\n')[0] };
  }
}
// Untimed runs first, then one timed run of each candidate in turn: a machine whose speed drifts treats them alike.
for (let round = 0; round < spec.rounds; round++) {
  for (const session of Object.values(sessions)) {
    for (let i = 0; i < spec.warmup; i++) await session.run({ pixel_values: input });
  }
  for (let i = 0; i < spec.runs; i++) {
    for (const [name, session] of Object.entries(sessions)) {
      const started = performance.now();
      await session.run({ pixel_values: input });
      result.candidates[name].times_ms.push(performance.now() - started);
    }
  }
}
console.log(JSON.stringify(result));
