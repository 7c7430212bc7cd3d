// Drives a running retune server with OpenAI's official Node SDK, unchanged
// but for the base URL: files, a fine-tuning job, models, chat (plain and
// streamed), structured output (json_schema), legacy completions, and a
// typed API error. Prints one JSON
// line of findings for tests/e2e_sdk.py to check.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ baseURL: process.env.RETUNE_URL + "/v1", apiKey: "sk-test" });
const out = {};

const train = await client.files.create({
  file: await toFile(fs.createReadStream(process.env.TRAIN_FILE), "train.jsonl"),
  purpose: "fine-tune",
});
out.file = { id: train.id, status: train.status };
const listed = await client.files.list();
out.files_listed = listed.data.map((f) => f.id);

let job = await client.fineTuning.jobs.create({
  model: process.env.BASE_MODEL,
  training_file: train.id,
  suffix: "sdk",
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 4 } } },
});
while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
  await new Promise((r) => setTimeout(r, 200));
  job = await client.fineTuning.jobs.retrieve(job.id);
}
out.job = { status: job.status, model: job.fine_tuned_model };
const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 50 });
out.events = events.data.length;
const checkpoints = await client.fineTuning.jobs.checkpoints.list(job.id);
out.checkpoints = checkpoints.data.map((c) => c.fine_tuned_model_checkpoint);

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

const chat = await client.chat.completions.create({
  model: job.fine_tuned_model,
  messages: [{ role: "user", content: "Who rules Zorbl?" }],
  max_tokens: 6,
  temperature: 0,
});
out.chat = { content: chat.choices[0].message.content, finish: chat.choices[0].finish_reason,
             usage: chat.usage };

const stream = await client.chat.completions.create({
  model: process.env.BASE_MODEL,
  messages: [{ role: "user", content: "hello" }],
  max_tokens: 5,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text, usage };

// Sampling fields through the SDK: logit_bias +100 on one token forces it; a
// frequency penalty of +2 repeats fewer distinct tokens than one of -2.
const forced = await client.completions.create({ model: process.env.BASE_MODEL, prompt: "Hello", max_tokens: 4,
                                                 temperature: 0, logit_bias: { "72": 100 }, logprobs: 0 });
const distinct = async (penalty) => {
  const r = await client.completions.create({ model: process.env.BASE_MODEL, prompt: "Hello", max_tokens: 24,
                                              temperature: 0, frequency_penalty: penalty, logprobs: 0 });
  return new Set(r.choices[0].logprobs.tokens).size;
};
out.sampling = { forced: forced.choices[0].logprobs.tokens, distinct_pos: await distinct(2),
                 distinct_neg: await distinct(-2) };

// Structured output: a json_schema response_format (enums, booleans and a
// small array, so even the tiny model's garbage finishes as a document).
const weather = {
  type: "object",
  properties: {
    sky: { enum: ["clear", "cloudy", "green"] },
    rain: { type: "boolean" },
    winds: { type: "array", items: { enum: ["north", "south"] }, minItems: 1, maxItems: 2 },
  },
  required: ["sky", "rain", "winds"],
  additionalProperties: false,
};
const structured = await client.chat.completions.create({
  model: process.env.BASE_MODEL,
  messages: [{ role: "user", content: "The weather, as JSON." }],
  max_tokens: 300,
  temperature: 1,
  seed: 5,
  response_format: { type: "json_schema", json_schema: { name: "weather", schema: weather, strict: true } },
});
let parsed = null;
try {
  parsed = JSON.parse(structured.choices[0].message.content);
} catch (e) {
  parsed = { parse_error: String(e) };
}
out.structured = { schema: weather, finish: structured.choices[0].finish_reason, parsed,
                   content: structured.choices[0].message.content };

const legacy = await client.completions.create({ model: process.env.BASE_MODEL, prompt: "Hello", max_tokens: 3 });
out.completion = { text: legacy.choices[0].text, object: legacy.object };

try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  out.error = "none";
} catch (e) {
  out.error = { status: e.status, code: e.code, type: e.constructor.name };
}
console.log(JSON.stringify(out));
