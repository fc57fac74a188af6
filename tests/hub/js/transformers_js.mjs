// Load a Hub folder with transformers.js, remote models off, and run it:
//   node transformers_js.mjs SPEC.json
// SPEC: {folder, dtype, head: "classify" | "model" | null, inputs: {name: {file, dims, type}}, images: [paths], out: dir}
// Prints JSON: the model's outputs on the given inputs (files in `out`), and for the images the pixels transformers.js'
// own processor (sharp) made of them and, with head "classify", the pipeline's top 5. With head null only the
// processor runs (a folder with just preprocessor_config.json and config.json will do).
import path from 'node:path';
import { env, pipeline, AutoModel, AutoModelForImageClassification, AutoProcessor, RawImage, Tensor } from '@huggingface/transformers';
import { readSpec, readInputs, writeTensor } from './tensors.mjs';

const spec = readSpec();
env.allowRemoteModels = false;
env.localModelPath = path.dirname(spec.folder) + path.sep;
const name = path.basename(spec.folder);
const options = { dtype: spec.dtype, device: 'cpu' };

const result = { outputs: {}, pipeline: [], processor: [] };
if (spec.head) {
  const Model = spec.head === 'classify' ? AutoModelForImageClassification : AutoModel;
  var model = await Model.from_pretrained(name, options);
  result.class = model.constructor.name;
}
if (spec.inputs) {
  const feeds = {};
  for (const [key, [type, data, dims]] of Object.entries(readInputs(spec.inputs))) feeds[key] = new Tensor(type, data, dims);
  const outputs = await model(feeds);
  for (const [key, value] of Object.entries(outputs)) result.outputs[key] = writeTensor(spec.out, `output-${key}`, value);
}
if (spec.images?.length) {
  const classify = spec.head === 'classify' ? await pipeline('image-classification', name, options) : null;
  const processor = await AutoProcessor.from_pretrained(name);
  for (const [i, image] of spec.images.entries()) {
    if (classify) result.pipeline.push(await classify(image, { top_k: 5 }));
    const { pixel_values } = await processor(await RawImage.read(image));
    result.processor.push(writeTensor(spec.out, `pixels-${i}`, pixel_values));
  }
}
console.log(JSON.stringify(result));
