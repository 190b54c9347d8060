#!/usr/bin/env node
// Reference outputs of the teacher graph models from the official TF.js runtime (CPU backend).
//
// How to run (details in scripts/tfjs_reference.md):
//   PYTHONPATH=src python scripts/make_teacher_fixtures.py   # fetch models, write *_input.npy
//   mkdir /tmp/tfjsref && cd /tmp/tfjsref && npm init -y &&
//     npm install @tensorflow/tfjs-core @tensorflow/tfjs-converter @tensorflow/tfjs-backend-cpu
//   NODE_PATH=/tmp/tfjsref/node_modules node scripts/tfjs_reference.js <cache_root> tests/fixtures
//
// For each teacher it loads <cache_root>/<name>/<name>.json with loadGraphModel through a small
// fs-based IO handler (no network, no tfjs-node), runs it on <fixtures>/<name>_input.npy (uint8
// NHWC, scaled the way the teacher expects) and writes the outputs as float32 .npy files:
// full tensors where small, a strided subset plus exact full-tensor statistics where large.
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfc = require('@tensorflow/tfjs-converter');

function fileHandler(jsonPath) {
  // Minimal IOHandler: reads model.json and concatenates the weight shards from disk.
  return {
    load: async () => {
      const spec = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
      const dir = path.dirname(jsonPath);
      const weightSpecs = [];
      const buffers = [];
      for (const group of spec.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: spec.modelTopology,
        weightSpecs,
        weightData,
        format: spec.format,
        generatedBy: spec.generatedBy,
        convertedBy: spec.convertedBy,
        signature: spec.signature,
        userDefinedMetadata: spec.userDefinedMetadata,
      };
    },
  };
}

function readNpyU8(file) {
  const buf = fs.readFileSync(file);
  const hlen = buf.readUInt16LE(8);
  const header = buf.slice(10, 10 + hlen).toString('latin1');
  if (!header.includes("'|u1'")) throw new Error(`${file}: expected uint8 npy`);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  return { shape, data: new Uint8Array(buf.buffer, buf.byteOffset + 10 + hlen, shape.reduce((a, b) => a * b, 1)) };
}

function writeNpyF32(file, shape, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1; pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  const body = Buffer.from(new Float32Array(data).buffer);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

// teacher -> input scaling and how each output is stored
const TEACHERS = {
  centernet: {
    divisor: 1, // RGB 0..255
    outputs: {
      'tower_0/keypoints': { key: 'keypoints', stride: 4 }, // [1,128,128,80] -> [1,32,32,80]
      'tower_0/wh': { key: 'wh' },
      'tower_0/detections': { key: 'detections' },
    },
  },
  selfie: { divisor: 255, // RGB 0..1
    outputs: { 'activation_10:0': { key: 'mask' } } },
};

async function main() {
  const [cacheRoot, outDir] = process.argv.slice(2);
  if (!cacheRoot || !outDir) throw new Error('usage: tfjs_reference.js <cache_root> <fixtures_dir>');
  await tf.setBackend('cpu');
  for (const [name, cfg] of Object.entries(TEACHERS)) {
    const model = await tfc.loadGraphModel(fileHandler(path.join(cacheRoot, name, `${name}.json`)));
    const inp = readNpyU8(path.join(outDir, `${name}_input.npy`));
    const x = tf.tidy(() => tf.expandDims(tf.div(tf.cast(tf.tensor(inp.data, inp.shape, 'int32'), 'float32'), cfg.divisor), 0));
    const names = Object.keys(cfg.outputs);
    let outs = await model.executeAsync(x, names);
    if (!Array.isArray(outs)) outs = [outs];
    const stats = {};
    for (let i = 0; i < names.length; i++) {
      const { key, stride } = cfg.outputs[names[i]];
      const t = outs[i];
      const full = t.dataSync();
      stats[key] = {
        shape: t.shape,
        sum: full.reduce((a, b) => a + b, 0),
        abs_sum: full.reduce((a, b) => a + Math.abs(b), 0),
        max: full.reduce((a, b) => Math.max(a, b), -Infinity),
        min: full.reduce((a, b) => Math.min(a, b), Infinity),
      };
      let sub = t;
      if (stride) sub = tf.stridedSlice(t, [0, 0, 0, 0], t.shape, [1, stride, stride, 1]);
      writeNpyF32(path.join(outDir, `${name}_${key}.npy`), sub.shape, sub.dataSync());
      stats[key].stored_stride = stride || 1;
    }
    stats.tfjs_version = tf.version_core;
    stats.backend = tf.getBackend();
    fs.writeFileSync(path.join(outDir, `${name}_tfjs.json`), JSON.stringify(stats, null, 1));
    console.log(name, JSON.stringify(stats));
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
