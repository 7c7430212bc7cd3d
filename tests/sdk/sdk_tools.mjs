// Tool calling through OpenAI's official Node SDK, unchanged but for the
// base URL: a model fine-tuned to call get_weather (tests/e2e_tools.py
// trains it) is asked with `tools`, plain and streamed; the SDK's own
// stream helper assembles the tool-call deltas. Prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.RETUNE_URL + "/v1", apiKey: "sk-test" });
const tools = JSON.parse(process.env.TOOLS);
const ask = { model: process.env.MODEL, tools, temperature: 0, max_tokens: 120,
              messages: [{ role: "user", content: "Weather in Paris?" }] };
const out = {};

const plain = await client.chat.completions.create(ask);
out.plain = { finish: plain.choices[0].finish_reason, message: plain.choices[0].message };

const runner = client.beta.chat.completions.stream(ask);
const final = await runner.finalChatCompletion();
out.stream = { finish: final.choices[0].finish_reason, message: final.choices[0].message };
console.log(JSON.stringify(out));
