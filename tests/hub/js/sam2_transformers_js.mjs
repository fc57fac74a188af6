// Load a SAM 2 Hub folder with transformers.js' Sam2Model and its processor (remote models off) and segment:
//   node sam2_transformers_js.mjs SPEC.json
// SPEC: {folder, image, dtypes: [dtype or {file: dtype}], prompts: [{input_points?, input_labels?, input_boxes?}],
//        pixel_values?: {file, dims, type}, out: dir}
// For each dtype and prompt: the processor makes the inputs from the image and the prompt (its own resize and
// point scaling); with pixel_values given, those pixels replace the processor's (so that only the models differ).
// Prints JSON: the model's class, the processor's pixels, and per dtype and prompt pred_masks, iou_scores and the
// masks its post_process_masks makes at the image's size (files in `out`).
import path from 'node:path';
import { env, AutoProcessor, RawImage, Sam2Model, Tensor } from '@huggingface/transformers';
import { readSpec, readInputs, writeTensor } from './tensors.mjs';

const spec = readSpec();
env.allowRemoteModels = false;
env.localModelPath = path.dirname(spec.folder) + path.sep;
const name = path.basename(spec.folder);

const processor = await AutoProcessor.from_pretrained(name);
const image = await RawImage.read(spec.image);
const given = spec.pixel_values ? readInputs({ pixel_values: spec.pixel_values }).pixel_values : null;
const result = { processor: processor.constructor.name, runs: [] };
for (const [d, dtype] of spec.dtypes.entries()) {
  const model = await Sam2Model.from_pretrained(name, { dtype, device: 'cpu' });
  result.class = model.constructor.name;
  const answers = [];
  for (const [p, prompt] of spec.prompts.entries()) {
    const inputs = await processor(image, prompt);
    if (d === 0 && p === 0) result.pixels = writeTensor(spec.out, 'pixels', inputs.pixel_values);
    if (given) inputs.pixel_values = new Tensor(...given);
    const { pred_masks, iou_scores } = await model(inputs);
    const [masks] = await processor.post_process_masks(pred_masks, inputs.original_sizes, inputs.reshaped_input_sizes);
    answers.push({
      pred_masks: writeTensor(spec.out, `pred_masks-${d}-${p}`, pred_masks),
      iou_scores: writeTensor(spec.out, `iou_scores-${d}-${p}`, iou_scores),
      masks: writeTensor(spec.out, `masks-${d}-${p}`, masks),
    });
  }
  result.runs.push(answers);
}
console.log(JSON.stringify(result));
