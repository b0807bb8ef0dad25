// One request with undici's fetch, result as one JSON line on stdout.
//
//   node fetch_client.mjs URL [--proxy URL | --env] [--cacert PEM] [--method M] [--data S]
//
// --proxy uses `ProxyAgent` (explicit proxy); --env uses `EnvHttpProxyAgent`, which
// reads HTTP_PROXY/HTTPS_PROXY/NO_PROXY like a runtime configured by the job manager.
// Output: {"status":..,"body":..,"headers":{..}} or {"error":name,"message":..,"causes":[..]}.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fetch, ProxyAgent, EnvHttpProxyAgent } from 'undici';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    proxy: { type: 'string' },
    env: { type: 'boolean', default: false },
    // undici tunnels even http:// targets through CONNECT by default; --forward sends
    // them absolute-form instead (what curl and requests do).
    forward: { type: 'boolean', default: false },
    cacert: { type: 'string' },
    method: { type: 'string', default: 'GET' },
    data: { type: 'string' },
  },
});
const url = positionals[0];
if (!url || (!values.proxy && !values.env)) {
  console.error('usage: fetch_client.mjs URL (--proxy URL | --env) [--cacert PEM]');
  process.exit(2);
}
// The CA goes to the origin's TLS (inside the tunnel), not to the proxy connection.
const requestTls = values.cacert ? { ca: readFileSync(values.cacert) } : undefined;
const dispatcher = values.env
  ? new EnvHttpProxyAgent({ requestTls, proxyTunnel: !values.forward })
  : new ProxyAgent({ uri: values.proxy, requestTls, proxyTunnel: !values.forward });

// Every message down the cause chain: the proxy's status hides one or two levels deep.
function causes(e) {
  const out = [];
  for (let c = e.cause, depth = 0; c && depth < 5; c = c.cause, depth++) out.push(String(c.message ?? c));
  return out;
}

let out;
try {
  const res = await fetch(url, {
    dispatcher,
    method: values.method,
    body: values.data,
    signal: AbortSignal.timeout(20000),
  });
  out = { status: res.status, body: await res.text(), headers: Object.fromEntries(res.headers) };
} catch (e) {
  out = { error: e.name, message: e.message, causes: causes(e) };
}
console.log(JSON.stringify(out));
await dispatcher.close();
