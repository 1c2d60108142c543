// The code interpreter's JavaScript kernel: one Node.js process per
// context, state kept in one vm context across cells. Requests arrive as
// JSON lines on stdin ({"id", "code"}); outputs leave as JSON lines on fd 3
// ({"id", "type": "stdout"|"stderr"|"result"|"error"|"end", ...}); what the
// code writes to process.stdout/stderr directly is forwarded by the server.
// SIGINT interrupts a running cell (vm's breakOnSigint). With
// COCOON_KERNEL_TS=1 it is the TypeScript kernel: each cell is transpiled
// with Debian's node-typescript (types stripped, no type check) first.
'use strict'
const vm = require('node:vm')
const util = require('node:util')
const fs = require('node:fs')
const readline = require('node:readline')
const { Module } = require('node:module')

let current = null
const out = (msg) => fs.writeSync(3, JSON.stringify(msg) + '\n')
const emit = (type, fields) => { if (current !== null) out(Object.assign({ id: current, type }, fields)) }
const fmt = (args) => util.formatWithOptions({ colors: false }, ...args) + '\n'
const con = {
  log: (...a) => emit('stdout', { text: fmt(a) }),
  info: (...a) => emit('stdout', { text: fmt(a) }),
  debug: (...a) => emit('stdout', { text: fmt(a) }),
  error: (...a) => emit('stderr', { text: fmt(a) }),
  warn: (...a) => emit('stderr', { text: fmt(a) }),
  trace: (...a) => emit('stderr', { text: fmt(a) }),
  dir: (o) => emit('stdout', { text: util.inspect(o) + '\n' }),
  table: (o) => emit('stdout', { text: util.inspect(o) + '\n' }),
}
const req = Module.createRequire(process.cwd() + '/')
const sandbox = {
  console: con, require: req, process, Buffer, URL, URLSearchParams, TextEncoder, TextDecoder,
  setTimeout, clearTimeout, setInterval, clearInterval, setImmediate, clearImmediate, queueMicrotask,
  structuredClone, fetch: globalThis.fetch, AbortController, performance: globalThis.performance,
  module: { exports: {} },
}
sandbox.exports = sandbox.module.exports
sandbox.globalThis = sandbox
const context = vm.createContext(sandbox)
let transpile = (code) => code
if (process.env.COCOON_KERNEL_TS === '1') {
  const ts = require('typescript')
  transpile = (code) => ts.transpile(code, { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.None })
}
process.on('SIGINT', () => {})

function result(v) {
  if (v === undefined) return
  const r = { is_main_result: true, text: typeof v === 'string' ? v : util.inspect(v) }
  if (v !== null && typeof v === 'object') {
    try { r.json = JSON.parse(JSON.stringify(v)) } catch {}
  }
  emit('result', r)
}

function fail(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e)) {
    emit('error', { name: e.name || 'Error', value: e.message || String(e), traceback: String(e.stack || '') })
  } else {
    emit('error', { name: 'Error', value: String(e), traceback: '' })
  }
}

async function run(code) {
  code = transpile(code)
  let script
  try {
    script = new vm.Script(code, { filename: 'cell.js' })
  } catch (e) {
    if (!(e instanceof SyntaxError) || !/await/.test(code)) throw e
    // Top-level await: run as an async function (its declarations are local).
    script = new vm.Script('(async () => {\n' + code + '\n})()', { filename: 'cell.js' })
  }
  let v = script.runInContext(context, { breakOnSigint: true, displayErrors: false })
  if (v && typeof v.then === 'function') v = await v
  result(v)
}

const queue = []
let busy = false
async function pump() {
  if (busy) return
  busy = true
  while (queue.length) {
    const { id, code } = queue.shift()
    current = id
    try { await run(code) } catch (e) { fail(e) }
    out({ id, type: 'end' })
    current = null
  }
  busy = false
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let msg
  try { msg = JSON.parse(line) } catch { return }
  queue.push(msg)
  pump()
}).on('close', () => process.exit(0))
out({ id: null, type: 'ready' })
