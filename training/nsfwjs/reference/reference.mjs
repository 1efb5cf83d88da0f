// Runs nsfwjs itself (pure-JS tfjs CPU backend) on fixture PNGs already at each model's input
// size and prints, per model and image, the class probabilities in nsfwjs's class order and the
// pooled embedding the classification head reads.
import fs from "node:fs";
import path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { PNG } from "pngjs";
import { load } from "nsfwjs";

const [imagesDir, outPath, ...only] = process.argv.slice(2);
const MODELS = [
  { key: "mobilenet_v2", name: "MobileNetV2", size: 224, embedding: "flatten_1" },
  { key: "mobilenet_v2_mid", name: "MobileNetV2Mid", size: 224,
    embedding: "StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/StatefulPartitionedCall/StatefulPartitionedCall/predict/feature_vector/SpatialSqueeze" },
  { key: "inception_v3", name: "InceptionV3", size: 299, embedding: "flatten_1" },
];
const CLASSES = ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"];

function readPng(file) {
  const png = PNG.sync.read(fs.readFileSync(file));
  const rgb = new Int32Array(png.width * png.height * 3);
  for (let i = 0, j = 0; i < png.data.length; i += 4, j += 3) {
    rgb[j] = png.data[i]; rgb[j + 1] = png.data[i + 1]; rgb[j + 2] = png.data[i + 2];
  }
  return tf.tensor3d(rgb, [png.height, png.width, 3], "int32");
}

await tf.setBackend("cpu");
await tf.ready();
const result = { nsfwjs_version: "4.4.0", tfjs_version: tf.version.tfjs, backend: tf.getBackend(),
                 classes: CLASSES, models: {} };
for (const spec of MODELS) {
  if (only.length && !only.includes(spec.key)) continue;
  const started = Date.now();
  const nsfw = await load(spec.name);
  const loaded = Date.now();
  const images = {};
  const files = fs.readdirSync(imagesDir).filter((f) => f.endsWith(`_${spec.size}.png`)).sort();
  for (const file of files) {
    const img = readPng(path.join(imagesDir, file));
    const probs = Array.from(await nsfw.infer(img).data());
    let embedding;
    if (spec.key === "mobilenet_v2_mid") {
      const x = tf.tidy(() => img.toFloat().div(255).reshape([1, spec.size, spec.size, 3]));
      embedding = Array.from(await nsfw.model.execute(x, spec.embedding).data());
    } else {
      embedding = Array.from(await nsfw.infer(img, spec.embedding).data());
    }
    const top = await nsfw.classify(img, 1);
    images[file.replace(`_${spec.size}.png`, "")] = { probs, embedding, top_class: top[0].className };
  }
  result.models[spec.key] = { input_size: spec.size, embedding_output: spec.embedding, images,
                              load_s: (loaded - started) / 1000, infer_s: (Date.now() - loaded) / 1000 };
  console.error(`${spec.key}: load ${(loaded - started) / 1000}s, ${files.length} images ${(Date.now() - loaded) / 1000}s`);
}
fs.writeFileSync(outPath, JSON.stringify(result));
