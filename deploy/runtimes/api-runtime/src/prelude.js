// The script's globals, built before the script runs. `host` holds the Rust functions;
// it is reachable only through the closures below, never from the script. Everything
// the host depends on is captured here first, so a script that replaces JSON, Object or
// Error methods only changes what its own code sees.
(function (host, env, secure) {
  'use strict';
  const stringify = JSON.stringify;
  const freeze = Object.freeze;
  const create = Object.create;
  const defineProperty = Object.defineProperty;
  const keysOf = Object.keys;
  const getPrototypeOf = Object.getPrototypeOf;
  const isArray = Array.isArray;
  const objectIs = Object.is;
  const apply = Reflect.apply;
  const ownProperty = Object.prototype.hasOwnProperty;
  const objectToString = Object.prototype.toString;
  const Str = String;
  const hasOwn = (o, k) => apply(ownProperty, o, [k]);
  const own = (o, k) => (hasOwn(o, k) ? o[k] : undefined);
  const toStr = (v) => apply(objectToString, v, []);
  // Array helpers that do not go through Array.prototype (a script may replace it).
  const append = (a, x) => { a[a.length] = x; };
  const joinWith = (a, sep) => { let out = ''; for (let i = 0; i < a.length; i++) out += (i ? sep : '') + a[i]; return out; };
  const contains = (a, x) => { for (let i = 0; i < a.length; i++) if (a[i] === x) return true; return false; };
  const hostLog = host.log, hostHttp = host.http, hostSetTimeout = host.setTimeout, hostClearTimeout = host.clearTimeout;

  function deepFreeze(v) {
    if (v && typeof v === 'object') {
      for (const k of keysOf(v)) deepFreeze(v[k]);
      freeze(v);
    }
    return v;
  }

  // --- formatting (console and assertion messages) ---
  function inspect(v, depth, seen) {
    depth = depth || 0;
    seen = seen || [];
    if (typeof v === 'string') return depth === 0 ? v : "'" + v + "'";
    if (typeof v === 'function') return '[Function: ' + (v.name || 'anonymous') + ']';
    if (typeof v === 'symbol' || typeof v === 'bigint') return Str(v) + (typeof v === 'bigint' ? 'n' : '');
    if (v === null || typeof v !== 'object') return Str(v);
    if (v instanceof Error) return Str(v.name) + ': ' + Str(v.message);
    if (contains(seen, v)) return '[Circular]';
    if (depth > 4) return isArray(v) ? '[Array]' : '[Object]';
    if (v instanceof Date) return isNaN(v) ? 'Invalid Date' : v.toISOString();
    if (v instanceof RegExp) return Str(v);
    append(seen, v);
    let out;
    if (isArray(v)) {
      const items = [];
      for (let i = 0; i < v.length && i < 100; i++) append(items, inspect(v[i], depth + 1, seen));
      if (v.length > 100) append(items, '... ' + (v.length - 100) + ' more items');
      out = '[ ' + joinWith(items, ', ') + ' ]';
      if (!items.length) out = '[]';
    } else if (v instanceof Map || v instanceof Set) {
      const items = [];
      for (const e of v) append(items, v instanceof Map ? inspect(e[0], depth + 1, seen) + ' => ' + inspect(e[1], depth + 1, seen) : inspect(e, depth + 1, seen));
      out = (v instanceof Map ? 'Map(' : 'Set(') + v.size + ') { ' + joinWith(items, ', ') + ' }';
    } else {
      const items = [];
      const ks = keysOf(v);
      for (let i = 0; i < ks.length && i < 100; i++) append(items, ks[i] + ': ' + inspect(v[ks[i]], depth + 1, seen));
      if (ks.length > 100) append(items, '... ' + (ks.length - 100) + ' more properties');
      out = items.length ? '{ ' + joinWith(items, ', ') + ' }' : '{}';
    }
    seen.length -= 1;
    return out;
  }
  function format(args) {
    const parts = [];
    for (let i = 0; i < args.length; i++) append(parts, inspect(args[i]));
    return joinWith(parts, ' ');
  }

  const console = {};
  for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
    console[level] = function () { hostLog(level, format(arguments)); };
  }
  console.trace = console.debug;

  // --- assert: Node's surface for the common calls ---
  class AssertionError extends Error {
    constructor(options) {
      super(options.message);
      this.name = 'AssertionError';
      this.code = 'ERR_ASSERTION';
      this.actual = options.actual;
      this.expected = options.expected;
      this.operator = options.operator;
      this.generatedMessage = !options.userMessage;
    }
  }
  function fail(actual, expected, message, operator, generated) {
    if (message instanceof Error) throw message;
    throw new AssertionError({
      message: message === undefined ? generated : String(message),
      userMessage: message !== undefined, actual, expected, operator,
    });
  }
  function isDeepEqual(a, b, strict, memo) {
    if (strict ? objectIs(a, b) : (a == b || (a !== a && b !== b))) return true;
    if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
    if (strict && getPrototypeOf(a) !== getPrototypeOf(b)) return false;
    if (toStr(a) !== toStr(b)) return false;
    if (a instanceof Date) return a.getTime() === b.getTime();
    if (a instanceof RegExp) return String(a) === String(b);
    if (a instanceof Error && (a.message !== b.message || a.name !== b.name)) return false;
    memo = memo || [];
    for (const [x, y] of memo) if (x === a && y === b) return true;
    memo.push([a, b]);
    if (a instanceof Map || a instanceof Set) {
      if (a.size !== b.size) return false;
      const ea = [...a].sort(), eb = [...b].sort();
      return isDeepEqual(ea, eb, strict, memo);
    }
    if (isArray(a) && a.length !== b.length) return false;
    const ka = keysOf(a), kb = keysOf(b);
    if (ka.length !== kb.length) return false;
    for (const k of ka) {
      if (!hasOwn(b, k) || !isDeepEqual(a[k], b[k], strict, memo)) return false;
    }
    return true;
  }
  function matchesExpected(err, expected) {
    if (expected === undefined) return true;
    if (expected instanceof RegExp) return expected.test(String(err && err.message !== undefined ? err.message : err)) || expected.test(String(err));
    if (typeof expected === 'function') {
      if (expected.prototype !== undefined && err instanceof expected) return true;
      if (Error.isPrototypeOf(expected) || expected === Error) return false;
      return expected.call({}, err) === true;
    }
    if (typeof expected === 'object' && expected !== null) {
      for (const k of keysOf(expected)) {
        const want = expected[k];
        const got = err == null ? undefined : err[k];
        if (want instanceof RegExp && typeof got === 'string') { if (!want.test(got)) return false; }
        else if (!isDeepEqual(got, want, true)) return false;
      }
      return true;
    }
    return false;
  }
  function assert(value, message) { assert.ok(value, message); }
  assert.AssertionError = AssertionError;
  assert.ok = function ok(value, message) {
    if (!value) fail(value, true, message, '==', 'The expression evaluated to a falsy value:\n\n  assert.ok(' + inspect(value, 1) + ')');
  };
  assert.equal = function equal(actual, expected, message) {
    if (!(actual == expected || (actual !== actual && expected !== expected))) fail(actual, expected, message, '==', inspect(actual, 1) + ' == ' + inspect(expected, 1));
  };
  assert.notEqual = function notEqual(actual, expected, message) {
    if (actual == expected || (actual !== actual && expected !== expected)) fail(actual, expected, message, '!=', inspect(actual, 1) + ' != ' + inspect(expected, 1));
  };
  assert.strictEqual = function strictEqual(actual, expected, message) {
    if (!objectIs(actual, expected)) fail(actual, expected, message, 'strictEqual', 'Expected values to be strictly equal:\n\n' + inspect(actual, 1) + ' !== ' + inspect(expected, 1));
  };
  assert.notStrictEqual = function notStrictEqual(actual, expected, message) {
    if (objectIs(actual, expected)) fail(actual, expected, message, 'notStrictEqual', 'Expected "actual" to be strictly unequal to: ' + inspect(expected, 1));
  };
  assert.deepEqual = function deepEqual(actual, expected, message) {
    if (!isDeepEqual(actual, expected, false)) fail(actual, expected, message, 'deepEqual', 'Expected values to be loosely deep-equal:\n\n' + inspect(actual, 1) + '\n\nshould loosely deep-equal\n\n' + inspect(expected, 1));
  };
  assert.deepStrictEqual = function deepStrictEqual(actual, expected, message) {
    if (!isDeepEqual(actual, expected, true)) fail(actual, expected, message, 'deepStrictEqual', 'Expected values to be strictly deep-equal:\n\n' + inspect(actual, 1) + '\n\nshould equal\n\n' + inspect(expected, 1));
  };
  assert.notDeepEqual = function notDeepEqual(actual, expected, message) {
    if (isDeepEqual(actual, expected, false)) fail(actual, expected, message, 'notDeepEqual', 'Expected "actual" not to be loosely deep-equal to: ' + inspect(expected, 1));
  };
  assert.match = function match(string, regexp, message) {
    if (!(regexp instanceof RegExp)) throw new TypeError('The "regexp" argument must be an instance of RegExp');
    if (typeof string !== 'string' || !regexp.test(string)) fail(string, regexp, message, 'match', (typeof string !== 'string' ? 'The "string" argument must be of type string. Received type ' + typeof string + ' (' + inspect(string, 1) + ')' : 'The input did not match the regular expression ' + String(regexp) + '. Input:\n\n' + inspect(string, 1)));
  };
  assert.doesNotMatch = function doesNotMatch(string, regexp, message) {
    if (!(regexp instanceof RegExp)) throw new TypeError('The "regexp" argument must be an instance of RegExp');
    if (typeof string !== 'string' || regexp.test(string)) fail(string, regexp, message, 'doesNotMatch', 'The input was expected to not match the regular expression ' + String(regexp) + '. Input:\n\n' + inspect(string, 1));
  };
  assert.fail = function (message) { fail(undefined, undefined, message, 'fail', 'Failed'); };
  function splitExpected(expected, message) {
    return (typeof expected === 'string' && message === undefined) ? [undefined, expected] : [expected, message];
  }
  assert.throws = function throws(fn, expected, message) {
    if (typeof fn !== 'function') throw new TypeError('The "fn" argument must be of type function');
    [expected, message] = splitExpected(expected, message);
    let threw = false, err;
    try { fn(); } catch (e) { threw = true; err = e; }
    if (!threw) fail(undefined, expected, message, 'throws', 'Missing expected exception.');
    if (!matchesExpected(err, expected)) {
      if (message !== undefined) fail(err, expected, message, 'throws');
      throw err;
    }
  };
  assert.rejects = async function rejects(promiseOrFn, expected, message) {
    [expected, message] = splitExpected(expected, message);
    let threw = false, err;
    try {
      await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
    } catch (e) { threw = true; err = e; }
    if (!threw) fail(undefined, expected, message, 'rejects', 'Missing expected rejection.');
    if (!matchesExpected(err, expected)) {
      if (message !== undefined) fail(err, expected, message, 'rejects');
      throw err;
    }
  };
  assert.strict = assert;

  // --- $http ---
  // Only the options' own properties count, and the host gets a null-prototype copy: a
  // polluted Object.prototype cannot add a URL, a header or a method to a request.
  function request(options) {
    if (typeof options === 'string') options = { url: options };
    if (options === null || typeof options !== 'object') return Promise.reject(new TypeError('$http.request(options): options must be an object or a URL string'));
    const method = own(options, 'method'), url = own(options, 'url'), headers = own(options, 'headers');
    const follow = own(options, 'followRedirect'), responseType = own(options, 'responseType');
    const spec = create(null);
    spec.method = method === undefined ? 'GET' : Str(method).toUpperCase();
    spec.url = url === undefined ? undefined : Str(url);
    spec.headers = create(null);
    spec.timeout = own(options, 'timeout');
    spec.followRedirect = follow === undefined ? true : !!follow;
    spec.responseType = responseType === undefined ? 'text' : Str(responseType);
    let hasContentType = false;
    if (headers) {
      const names = keysOf(headers);
      for (let i = 0; i < names.length; i++) {
        spec.headers[names[i]] = Str(headers[names[i]]);
        if (names[i].toLowerCase() === 'content-type') hasContentType = true;
      }
    }
    const json = own(options, 'json'), body = own(options, 'body');
    if (json !== undefined) {
      spec.body = stringify(json);
      if (!hasContentType) spec.headers['content-type'] = 'application/json';
    } else if (body !== undefined) {
      spec.body = Str(body);
    }
    return hostHttp(stringify(spec));
  }
  function withMethod(method) {
    return function (url, options) {
      const o = create(null);
      if (options) {
        const names = keysOf(options);
        for (let i = 0; i < names.length; i++) o[names[i]] = options[names[i]];
      }
      o.url = url;
      o.method = method;
      return request(o);
    };
  }
  const $http = {
    request,
    get: withMethod('GET'),
    head: withMethod('HEAD'),
    post: withMethod('POST'),
    put: withMethod('PUT'),
    patch: withMethod('PATCH'),
    delete: withMethod('DELETE'),
  };

  // --- timers ---
  function setTimeout(fn, ms) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout(fn, ms): fn must be a function');
    const args = Array.prototype.slice.call(arguments, 2);
    return hostSetTimeout(function () { fn.apply(undefined, args); }, Number(ms) || 0);
  }
  function clearTimeout(id) { if (typeof id === 'number') hostClearTimeout(id); }

  function require(name) {
    throw new Error('require(' + stringify(String(name)) + ') is not available: checks run without modules; ' +
      'use the globals $http, assert, console, $env, $secure, setTimeout');
  }

  const globals = {
    console: freeze(console), assert: freeze(assert), $http: freeze($http),
    $env: deepFreeze(env), $secure: freeze(secure), setTimeout, clearTimeout, require,
  };
  for (const name of keysOf(globals)) {
    defineProperty(globalThis, name, { value: globals[name], writable: false, enumerable: false, configurable: false });
  }
  freeze(AssertionError.prototype);
})
