// Drives the spec's StreamingAPI class against a server: node run_client.mjs BASE_URL STEPS_JSON
// STEPS_JSON is a list of [method, ...args]; each result is printed as one JSON line.
import { StreamingAPI } from './streaming_api.mjs';

const [baseURL, stepsJson, token] = process.argv.slice(2);
const api = new StreamingAPI(baseURL, token || undefined);
for (const [method, ...args] of JSON.parse(stepsJson)) {
  try {
    const result = await api[method](...args);
    console.log(JSON.stringify({ method, ok: true, result }));
  } catch (err) {
    console.log(JSON.stringify({ method, ok: false, error: String(err && err.message) }));
  }
}
