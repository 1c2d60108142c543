// Helpers of server.test.mjs: configuration from the environment, polling,
// and control of the `cocoon server` process for the restart test.

import assert from 'node:assert/strict'
import { spawn, execFile } from 'node:child_process'
import { openSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const here = path.dirname(fileURLToPath(import.meta.url))
export const repoRoot = path.resolve(here, '../../..')
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const execFileP = promisify(execFile)

/** Reads KEY=VALUE lines (with optional `export `) of an sdk.env file. */
export function readEnvFile(file) {
  const out = {}
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Z0-9_]+)=(.*)$/.exec(line)
    if (m) out[m[1]] = m[2].replace(/^['"]|['"]$/g, '')
  }
  return out
}

/**
 * The suite's configuration. Set by scripts/e2e-server.sh:
 *   COCOON_E2E_RUNTIME      qemu | gvisor (the server's --runtime)
 *   COCOON_E2E_DATA_DIR     the server's --data-dir (sdk.env, admin.token are read from it)
 *   COCOON_E2E_SERVER_ARGS  JSON array: the server's full command line (for the restart test)
 *   COCOON_E2E_PID_FILE     file holding the server's pid; the restart test rewrites it
 *   COCOON_E2E_SERVER_LOG   the server's log file (the restarted server appends to it)
 *   COCOON_E2E_SUBSET       full (default) | short: short skips the slow parts
 *   COCOON_BIN              the cocoon binary (default: bin/cocoon of the repo)
 * E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL default to <data dir>/sdk.env.
 */
export function config() {
  const dataDir = process.env.COCOON_E2E_DATA_DIR ?? ''
  const runtime = process.env.COCOON_E2E_RUNTIME ?? 'qemu'
  assert.ok(['qemu', 'gvisor'].includes(runtime), `COCOON_E2E_RUNTIME=${runtime}`)
  if (dataDir && existsSync(path.join(dataDir, 'sdk.env'))) {
    const env = readEnvFile(path.join(dataDir, 'sdk.env'))
    for (const k of ['E2B_API_KEY', 'E2B_API_URL', 'E2B_SANDBOX_URL']) process.env[k] ??= env[k]
  }
  for (const k of ['E2B_API_KEY', 'E2B_API_URL', 'E2B_SANDBOX_URL']) {
    assert.ok(process.env[k], `${k} is not set (set COCOON_E2E_DATA_DIR to a server's data dir, or the variable)`)
  }
  delete process.env.E2B_DEBUG
  return {
    runtime,
    dataDir,
    apiUrl: process.env.E2B_API_URL,
    sandboxUrl: process.env.E2B_SANDBOX_URL,
    apiKey: process.env.E2B_API_KEY,
    serverArgs: process.env.COCOON_E2E_SERVER_ARGS ? JSON.parse(process.env.COCOON_E2E_SERVER_ARGS) : null,
    pidFile: process.env.COCOON_E2E_PID_FILE ?? '',
    serverLog: process.env.COCOON_E2E_SERVER_LOG ?? '',
    subset: process.env.COCOON_E2E_SUBSET ?? 'full',
    cocoonBin: process.env.COCOON_BIN ?? path.join(repoRoot, 'bin/cocoon'),
  }
}

/** Polls until fn returns a truthy value or the deadline passes. Errors count as falsy. */
export async function eventually(fn, what, timeoutMs = 20_000, everyMs = 250) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ''}`)
    await sleep(everyMs)
  }
}

/** Runs the cocoon CLI (admin verbs) and returns its trimmed stdout. */
export async function cocoonCLI(cfg, args) {
  const { stdout } = await execFileP(cfg.cocoonBin, [...args, '--data-dir', cfg.dataDir, '--api-url', cfg.apiUrl], { timeout: 60_000 })
  return stdout.trim()
}

export function alive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export function serverPid(cfg) {
  const pid = Number(readFileSync(cfg.pidFile, 'utf8').trim())
  assert.ok(pid > 1, `no pid in ${cfg.pidFile}`)
  return pid
}

/** kill -9 the server and wait until it is gone. */
export async function killServer(cfg) {
  const pid = serverPid(cfg)
  assert.ok(alive(pid), `the server (pid ${pid}) is not running`)
  process.kill(pid, 'SIGKILL')
  await eventually(() => !alive(pid), `server pid ${pid} to exit after SIGKILL`, 10_000, 50)
  return pid
}

/** Starts the server again with the same command line, detached; records its pid. */
export async function startServer(cfg) {
  const log = openSync(cfg.serverLog || '/dev/null', 'a')
  const [bin, ...args] = cfg.serverArgs
  const child = spawn(bin, args, { detached: true, stdio: ['ignore', log, log] })
  child.unref()
  writeFileSync(cfg.pidFile, `${child.pid}\n`)
  return child.pid
}

/** Raw REST call to the api. */
export async function api(cfg, method, p, { body, key = cfg.apiKey, raw } = {}) {
  const headers = { 'X-API-KEY': key }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  const res = await fetch(cfg.apiUrl + p, {
    method,
    headers,
    body: raw !== undefined ? raw : body !== undefined ? JSON.stringify(body) : undefined,
  })
  const text = await res.text()
  let json
  try {
    json = text ? JSON.parse(text) : undefined
  } catch {
    json = undefined
  }
  return { status: res.status, json, text }
}
