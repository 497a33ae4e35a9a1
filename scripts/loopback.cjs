// Keeps Node servers on loopback: `node --require ./scripts/loopback.cjs ...` (the ./ or an
// absolute path is needed), or the same --require in NODE_OPTIONS, makes every net.Server (so
// http, https, express) that listens on a TCP port WITHOUT a host bind 127.0.0.1 instead of all
// interfaces. server-everything's HTTP mode and the conformance suite's mock servers call
// listen(port) / listen(0) with no host.
//
// The bind is synchronous, as Node's own no-host listen is: callers (the conformance harness)
// read server.address() right after listen(0) returns. Passing a host instead would not do:
// Node resolves any host through dns.lookup first, so address() would still be null then.
// So we bind a TCP handle to 127.0.0.1 ourselves and give it to the original listen, whose
// (handle[, backlog][, cb]) form takes it as is and starts listening at once.
//
// Untouched: a host (any non-empty one), a path (unix socket), a handle or an fd, a bad port
// (Node throws its usual error), and a server that is already listening. Only IPv4 loopback is
// bound: a client must reach it as 127.0.0.1 or as localhost resolved to 127.0.0.1.
//
// On Node 22, process.binding() prints a deprecation warning (DEP0111) on stderr; add
// --no-deprecation to hide it. Node 20 prints none.
'use strict';

const net = require('net');
const os = require('os');
const util = require('util');

const HOST = '127.0.0.1';
const listen = net.Server.prototype.listen;
const { TCP, constants: TCPConstants } = process.binding('tcp_wrap');

// Node's own conversions (lib/net.js): a non-negative number, or false.
const toNumber = (x) => ((x = Number(x)) >= 0 ? x : false);
const validPort = (p) =>
  (typeof p === 'number' || (typeof p === 'string' && p.trim() !== '')) &&
  +p === +p >>> 0 && +p <= 0xffff;

// The port and backlog of a listen() call that names no host, path, handle or fd; null if
// the call is anything else.
function noHostPort(args) {
  const a0 = args[0];
  // listen(), listen(cb), listen(null[, ...]), listen(undefined[, ...]): an arbitrary port.
  // listen(port[, backlog][, cb]): a string second argument would be the host.
  if (a0 === undefined || a0 === null || typeof a0 === 'function' ||
      typeof a0 === 'number' || (typeof a0 === 'string' && toNumber(a0) !== false)) {
    if (typeof a0 !== 'function' && typeof args[1] === 'string' && args[1] !== '') return null;
    const port = typeof a0 === 'function' || a0 == null ? 0 : a0;
    return { port, backlog: toNumber(args.length > 1 && args[1]) || toNumber(args.length > 2 && args[2]) };
  }
  // listen(options[, cb]) with a port (undefined/null meaning arbitrary) and nothing else.
  if (typeof a0 === 'object' && !Array.isArray(a0) && 'port' in a0 && !a0.host &&
      a0.path === undefined && a0.handle === undefined && a0._handle === undefined &&
      a0.fd === undefined && !(a0 instanceof TCP)) {
    const port = a0.port == null ? 0 : a0.port;
    return { port, backlog: a0.backlog || toNumber(args.length > 1 && args[1]), signal: a0.signal };
  }
  return null;
}

net.Server.prototype.listen = function loopbackListen(...args) {
  const call = this._handle ? null : noHostPort(args);
  if (call === null || !validPort(call.port)) return listen.apply(this, args);

  const port = +call.port;
  const handle = new TCP(TCPConstants.SERVER);
  // libuv defers EADDRINUSE from bind to listen (where Node would report it asynchronously,
  // without the address): an unbound socket's name shows it now.
  let err = handle.bind(HOST, port);
  const name = {};
  if (!err && (handle.getsockname(name) || name.address !== HOST || name.port === 0 ||
               (port !== 0 && name.port !== port))) {
    err = -os.constants.errno.EADDRINUSE; // uv errors are negated errnos
  }
  if (err) {
    handle.close();
    const code = util.getSystemErrorName(err);
    const e = new Error(`loopback.cjs: cannot bind ${HOST}:${port}: ${code}`);
    Object.assign(e, { code, errno: err, syscall: 'bind', address: HOST, port });
    throw e;
  }

  // The handle form of listen ignores options.signal: honour it as Node would (close on abort).
  const { signal } = call;
  if (signal) {
    const onAbort = () => this.close();
    if (signal.aborted) process.nextTick(onAbort);
    else {
      signal.addEventListener('abort', onAbort, { once: true });
      this.once('close', () => signal.removeEventListener('abort', onAbort));
    }
  }

  const rest = [handle];
  if (call.backlog) rest.push(call.backlog);
  const cb = args[args.length - 1];
  if (typeof cb === 'function') rest.push(cb);
  return listen.apply(this, rest);
};
