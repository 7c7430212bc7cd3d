// bench/llama_cpp_bench.mjs - llama.cpp (node-llama-cpp's prebuilt CPU build) on a GGUF file,
// the llama.cpp side of bench/serve_bench.py.
//
//   node bench/llama_cpp_bench.mjs --model M.gguf --prompts P.json [--tokens N] [--streams 8,32]
//        [--threads 2] [--check-tokens 16] [--skip-check] [--skip-ttft]
//
// P.json: {"check": "text", "short": [[ids], ...], "long": [ids]}: short prompts for
// decoding (one per stream, repeated when there are fewer), the 512-token prompt for
// time to first token, and a text prompt that llama.cpp tokenizes itself for the greedy
// check. Run from anywhere; node-llama-cpp is resolved from bench/node/node_modules.
//
// In order, in one process (getLlama({gpu: false}), threads from --threads):
//   check   greedy tokens of the check text (ids and each id's text), to compare with retune
//   single  one sequence: 4 untimed tokens, then --tokens greedy tokens;
//           decode_tokens_per_s = (tokens - 1) / (last token - first token)
//   ttft    the long prompt on an empty sequence: seconds to the first token, twice
//           (the second after clearing the sequence: llama.cpp keeps no prefix cache)
//   streams a context of N sequences, N greedy generations of --tokens tokens at once (node-llama-cpp
//           batches every sequence's next token into one llama_decode);
//           aggregate_tokens_per_s = all generated tokens / wall time from the start
// EOG tokens are yielded and generation goes on (yieldEogToken), so every run makes --tokens.
// One JSON line on stdout.
import {createRequire} from "node:module";
import {readFileSync} from "node:fs";
import {dirname, join} from "node:path";
import {fileURLToPath, pathToFileURL} from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node", "package.json"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);

function args(argv) {
    const o = {tokens: 64, streams: "8,32", threads: 2, checkTokens: 16, skipCheck: false, skipTtft: false};
    for (let i = 2; i < argv.length; i++) {
        const f = argv[i], v = argv[i + 1];
        if (f === "--model") o.model = v, i++;
        else if (f === "--prompts") o.prompts = v, i++;
        else if (f === "--tokens") o.tokens = +v, i++;
        else if (f === "--streams") o.streams = v, i++;
        else if (f === "--threads") o.threads = +v, i++;
        else if (f === "--check-tokens") o.checkTokens = +v, i++;
        else if (f === "--skip-check") o.skipCheck = true;
        else if (f === "--skip-ttft") o.skipTtft = true;
        else throw new Error(`unknown flag ${f}`);
    }
    if (!o.model || !o.prompts) throw new Error("usage: llama_cpp_bench.mjs --model M.gguf --prompts P.json");
    return o;
}

const now = () => Number(process.hrtime.bigint()) / 1e9;
const note = (msg) => process.stderr.write(`llama_cpp_bench: ${msg}\n`);

// Greedy generation of n tokens after prompt on seq; timestamps of each token.
async function generate(seq, prompt, n) {
    const ids = [], times = [];
    const t0 = now();
    if (n > 0) {
        for await (const tok of seq.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
            ids.push(tok);
            times.push(now());
            if (ids.length >= n) break;
        }
    }
    return {ids, times, t0};
}

const o = args(process.argv);
const P = JSON.parse(readFileSync(o.prompts, "utf8"));
const llama = await getLlama({gpu: false, build: "never", maxThreads: o.threads, progressLogs: false,
                              logLevel: LlamaLogLevel.error});
const tLoad = now();
const model = await llama.loadModel({modelPath: o.model, gpuLayers: 0});
const out = {bench: "llama_cpp", impl: "node-llama-cpp", model: o.model, threads: o.threads,
             gpu: llama.gpu, build: llama.buildType, llama_cpp_release: llama.llamaCppRelease?.release ?? null,
             load_s: +(now() - tLoad).toFixed(3), tokens: o.tokens};
const need = Math.max(o.tokens + 8 + Math.max(...P.short.map((p) => p.length)),
                      o.skipTtft ? 0 : P.long.length + 8);

{
    const ctx = await model.createContext({contextSize: Math.max(need, 256) + 256, threads: o.threads});
    out.flash_attention = ctx.flashAttention ?? null;
    const seq = ctx.getSequence();
    if (!o.skipCheck) {
        const prompt = model.tokenize(P.check);
        const g = await generate(seq, prompt, o.checkTokens);
        out.check = {prompt_ids: prompt, ids: g.ids, pieces: g.ids.map((t) => model.detokenize([t])),
                     text: model.detokenize(g.ids)};
        await seq.clearHistory();
    }
    note("single stream");
    await generate(seq, P.short[0], 4); // warm-up: pages of the mapped model, first allocations
    await seq.clearHistory();
    const g = await generate(seq, P.short[0], o.tokens);
    out.single = {decode_tokens_per_s: +((g.ids.length - 1) / (g.times.at(-1) - g.times[0])).toFixed(2),
                  first_token_s: +(g.times[0] - g.t0).toFixed(4), prompt_tokens: P.short[0].length};
    await seq.clearHistory();
    if (!o.skipTtft) {
        note(`time to first token, ${P.long.length}-token prompt`);
        const ttft = [];
        for (let i = 0; i < 2; i++) {
            const r = await generate(seq, P.long, 1);
            ttft.push(+(r.times[0] - r.t0).toFixed(4));
            await seq.clearHistory();
        }
        out.ttft = {prompt_tokens: P.long.length, first_s: ttft[0], again_s: ttft[1]};
    }
    await ctx.dispose();
}

out.streams = {};
for (const n of String(o.streams).split(",").filter(Boolean).map(Number)) {
    note(`${n} streams`);
    const ctx = await model.createContext({sequences: n, contextSize: need + 64, threads: o.threads,
                                           batchSize: Math.max(512, n)});
    const seqs = Array.from({length: n}, () => ctx.getSequence());
    await Promise.all(seqs.map((s, i) => generate(s, P.short[i % P.short.length], 2))); // warm-up
    await Promise.all(seqs.map((s) => s.clearHistory()));
    const t0 = now();
    const runs = await Promise.all(seqs.map((s, i) => generate(s, P.short[i % P.short.length], o.tokens)));
    const wall = now() - t0, total = runs.reduce((a, r) => a + r.ids.length, 0);
    const lastFirst = Math.max(...runs.map((r) => r.times[0])), end = Math.max(...runs.map((r) => r.times.at(-1)));
    const steady = runs.reduce((a, r) => a + r.times.filter((t) => t > lastFirst).length, 0);
    out.streams[n] = {aggregate_tokens_per_s: +(total / wall).toFixed(2),
                      steady_tokens_per_s: end > lastFirst ? +(steady / (end - lastFirst)).toFixed(2) : null,
                      wall_s: +wall.toFixed(3), tokens: total};
    await ctx.dispose();
}
await model.dispose();
console.log(JSON.stringify(out));
process.exit(0);
